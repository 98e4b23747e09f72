import itertools

import pytest

from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.errors import InfeasibleRequestError
from nanoflow_compiler.search.nano_dag import expand
from nanoflow_compiler.search.stage_one import list_schedule, op_durations
from nanoflow_compiler.search.stage_two import stage_two, validate_sm_request
from nanoflow_compiler.search.timeline import period


def brute_force(nano, orders, db, num_sms):
    """Every share tuple with sum <= SMs, durations straight from the table (solo time x pairwise slowdowns)."""
    streams = sorted(orders)
    kind_of = {s: {nano.nodes[n]["spec"].kind for n in orders[s]} for s in streams}
    assert all(len(k) == 1 for k in kind_of.values())  # one kind per stream: the table entry is the factor
    kind_of = {s: k.pop() for s, k in kind_of.items()}
    g = db.device.sm_granularity
    best = float("inf")
    for shares in itertools.product(range(g, num_sms + 1, g), repeat=len(streams)):
        if sum(shares) > num_sms:
            continue
        share = dict(zip(streams, shares))
        durations = {}
        for n, d in nano.nodes(data=True):
            c = d["stream"]
            extra = sum(db.interference[(kind_of[c], share[c], kind_of[o], share[o])] - 1 for o in streams if o != c)
            durations[n] = db.ops[d["spec"].kind][d["tokens"]][share[c]] * (1 + extra)
        best = min(best, period(nano, orders, durations))
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kinds,counts", [(["gemm", "attn"], {"COMPUTE": 2, "MEMORY": 4}),
                                          (["gemm", "attn", "net"], {"COMPUTE": 2, "MEMORY": 2, "NETWORK": 1})])
def test_milp_equals_brute_force(make_db, make_chain, seed, kinds, counts):
    db = make_db(seed, kinds=tuple(kinds))
    cost = TableCostModel(db)
    nano = expand(make_chain(kinds), 1024, counts, granularity=64)
    orders = list_schedule(nano, op_durations(nano, cost, {s: 48 for s in counts}))
    result = stage_two(nano, orders, cost)
    expected = brute_force(nano, orders, db, 48)
    assert result.period == pytest.approx(expected, rel=1e-7)
    assert result.milp_objective == pytest.approx(expected, rel=1e-6)
    assert sum(result.shares.values()) <= 48 and all(x % 8 == 0 for x in result.shares.values())


def test_fixed_share_and_smaller_budget(make_db, make_chain):
    db = make_db(7)
    cost = TableCostModel(db)
    nano = expand(make_chain(["gemm", "attn"]), 512, {"COMPUTE": 2, "MEMORY": 2}, granularity=64)
    orders = list_schedule(nano, op_durations(nano, cost, {"COMPUTE": 48, "MEMORY": 48}))
    pinned = stage_two(nano, orders, cost, fixed={"MEMORY": 16})
    assert pinned.shares["MEMORY"] == 16 and pinned.shares["COMPUTE"] <= 32
    small = stage_two(nano, orders, cost, num_sms=24)
    assert sum(small.shares.values()) <= 24


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_sms=64), "asked for 64 SMs but the device has 48"),
    (dict(fixed={"MEMORY": 12}), "12 SMs is not a positive multiple of the partition granularity 8"),
    (dict(fixed={"MEMORY": 40, "COMPUTE": 16}), "sum to 56 SMs, more than the 48 available"),
    (dict(allowed=[8, 20]), "20 SMs is not a positive multiple"),
    (dict(num_sms=8), "2 streams need at least 16 SMs"),
    (dict(fixed={"NETWORK": 8}), r"pinned shares name streams \['NETWORK'\]"),
])
def test_infeasible_requests_are_clear(make_db, make_chain, kwargs, match):
    cost = TableCostModel(make_db(0))
    nano = expand(make_chain(["gemm", "attn"]), 256, {"COMPUTE": 1, "MEMORY": 1})
    orders = {"COMPUTE": ["gemm#0"], "MEMORY": ["attn#0"]}
    with pytest.raises(InfeasibleRequestError, match=match):
        stage_two(nano, orders, cost, **kwargs)


def test_validate_sm_request_budget_below_granularity():
    with pytest.raises(InfeasibleRequestError, match="cannot hold one partition"):
        validate_sm_request(4, 8)
