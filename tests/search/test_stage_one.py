import itertools

import networkx as nx
import pytest

from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.nano_dag import expand
from nanoflow_compiler.search.stage_one import nano_batch_combinations, op_durations, stage_one
from nanoflow_compiler.search.timeline import DeadlockError, period


def stream_orders(nano, stream):
    """Every order of a stream's nano-ops that respects the in-layer data edges among them."""
    ops = [n for n, d in nano.nodes(data=True) if d["stream"] == stream]
    inner = nx.DiGraph([(u, v) for u, v, s in nano.edges(data="shift") if s == 0])
    for perm in itertools.permutations(ops):
        pos = {n: i for i, n in enumerate(perm)}
        if all(pos[u] < pos[v] for u, v in inner.edges if u in pos and v in pos):
            yield list(perm)


def brute_force(layer, tokens, cost, max_nano, granularity):
    """Min pipelined layer time over all nano-batch counts 1..max_nano and all per-stream orders."""
    best = float("inf")
    for counts in itertools.product(range(1, max_nano + 1), repeat=2):
        combo = dict(zip(["COMPUTE", "MEMORY"], counts))
        nano = expand(layer, tokens, combo, granularity)
        durations = op_durations(nano, cost, {"COMPUTE": cost.num_sms, "MEMORY": cost.num_sms})
        for oc in stream_orders(nano, "COMPUTE"):
            for om in stream_orders(nano, "MEMORY"):
                try:
                    best = min(best, period(nano, {"COMPUTE": oc, "MEMORY": om}, durations))
                except DeadlockError:
                    pass
    return best


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kinds,max_nano", [(["gemm", "attn"], 4), (["qkv", "attn", "o"], 3)])
def test_stage_one_equals_brute_force(make_db, make_chain, seed, kinds, max_nano):
    db = make_db(seed, kinds=tuple(sorted(set(kinds))), tokens=(128, 256, 336, 352, 512, 672, 688, 1024))
    cost = TableCostModel(db)
    layer = make_chain(kinds)
    best = stage_one(layer, 1024, cost, max_nano=max_nano, granularity=16)[0]
    assert best.period == pytest.approx(brute_force(layer, 1024, cost, max_nano, 16), rel=1e-9)
    assert set(best.nano_batches) == {"COMPUTE", "MEMORY"}


def test_candidates_ranked_and_light_ops_follow_compute(make_db, make_chain):
    combos = nano_batch_combinations(["COMPUTE", "LIGHT", "MEMORY"], 2, {"LIGHT": "COMPUTE"})
    assert len(combos) == 4 and all(c["LIGHT"] == c["COMPUTE"] for c in combos)
    cost = TableCostModel(make_db(1))
    cands = stage_one(make_chain(["gemm", "attn"]), 1024, cost, max_nano=4, granularity=64)
    assert len(cands) == 16
    assert all(a.period <= b.period * (1 + 1e-9) for a, b in zip(cands, cands[1:]))
