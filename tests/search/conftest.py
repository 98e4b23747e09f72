"""Synthetic profile tables and tiny layer graphs for the search tests (no GPU needed)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from nanoflow_compiler.search.layer_graph import COMPUTE, MEMORY, NETWORK, OpSpec, add_op
from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB

DEVICE = DeviceKey("Synthetic GPU", 48, "2.13.0", "3.6.0", 8)
SPECS = {
    "gemm": OpSpec("gemm", COMPUTE, 1e6, 1e6, 1e3),
    "qkv": OpSpec("qkv", COMPUTE, 1e6, 1e6, 1e3),
    "o": OpSpec("o", COMPUTE, 1e6, 1e6, 1e3),
    "attn": OpSpec("attn", MEMORY, 1e3, 0.0, 1e6),
    "net": OpSpec("net", NETWORK, 0.0, 0.0, 1e4),
}


def synthetic_db(seed: int, kinds=("gemm", "attn"), tokens=(64, 128, 256, 512, 1024), device=DEVICE) -> ProfileDB:
    """Random but plausible times: a fixed cost plus a per-token cost, shrinking sub-linearly with SMs."""
    rng = np.random.default_rng(seed)
    db = ProfileDB(device)
    sms = list(range(device.sm_granularity, device.sm_count + 1, device.sm_granularity))
    for kind in kinds:
        fixed, per_token, alpha = rng.uniform(5e-6, 40e-6), rng.uniform(0.05e-6, 0.5e-6), rng.uniform(0.3, 1.0)
        for t in tokens:
            for s in sms:
                db.add_time(kind, t, s, (fixed + per_token * t) * (device.sm_count / s) ** alpha)
    for a, b in [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1:]]:
        for n in sms:
            for m in sms:
                if n + m <= device.sm_count:
                    db.add_interference(a, n, b, m, rng.uniform(1.0, 1.6), rng.uniform(1.0, 1.6))
    return db


def chain_graph(kinds: list[str]) -> nx.DiGraph:
    """A layer that runs `kinds` one after another, the last feeding the first op of the next layer."""
    g = nx.DiGraph()
    for k in kinds:
        add_op(g, k, SPECS[k])
    for u, v in zip(kinds, kinds[1:]):
        g.add_edge(u, v, shift=0)
    g.add_edge(kinds[-1], kinds[0], shift=1)
    return g


@pytest.fixture
def make_db():
    return synthetic_db


@pytest.fixture
def make_chain():
    return chain_graph
