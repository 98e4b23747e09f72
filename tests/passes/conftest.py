"""Fixtures of the pass tests; the helpers live in passes_graphs.py (a conftest cannot be imported by name)."""

from __future__ import annotations

import pytest
import torch
from passes_graphs import trace_graph


@pytest.fixture
def trace():
    return trace_graph


@pytest.fixture
def mlp():
    """x[T, 16] -> relu(x @ w1) @ w2, with its weights."""
    def fn(x, w1, w2):
        return torch.relu(x @ w1) @ w2

    return fn, (torch.randn(8, 16), torch.randn(16, 32), torch.randn(32, 16))


@pytest.fixture
def kv_inputs():
    """Two requests appending 3 tokens each (a prefill chunk after 3 cached tokens, and one after 6)."""
    t, heads, kv_heads, dim, blocks, bs = 6, 4, 2, 8, 8, 4
    positions = torch.tensor([3, 4, 5, 6, 7, 8])
    token_req = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.int32)
    block_tables = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    slots = torch.stack([block_tables[r, p // bs] * bs + p % bs for r, p in zip(token_req.tolist(), positions.tolist())])
    return (torch.randn(t, heads, dim), torch.randn(t, kv_heads, dim), torch.randn(t, kv_heads, dim),
            torch.randn(blocks, bs, kv_heads, dim), torch.randn(blocks, bs, kv_heads, dim), slots.long(), token_req,
            positions, block_tables)
