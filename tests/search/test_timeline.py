import networkx as nx
import numpy as np
import pytest

from nanoflow_compiler.search.nano_dag import expand, split_points
from nanoflow_compiler.search.timeline import DeadlockError, cyclic_edges, period


def cycle_ratio_by_enumeration(nano, orders, durations) -> float:
    """Independent check: the largest (sum of durations) / (layer shifts) over all simple cycles."""
    g = nx.MultiDiGraph()
    for u, v, s in cyclic_edges(nano, orders):
        g.add_edge(u, v, shift=s)
    best = 0.0
    for cycle in nx.simple_cycles(nx.DiGraph(g)):
        pairs = list(zip(cycle, cycle[1:] + cycle[:1]))
        # Between two nodes take the edge with the smallest shift: it binds tighter.
        shifts = sum(min(d["shift"] for d in g.get_edge_data(u, v).values()) for u, v in pairs)
        assert shifts > 0
        best = max(best, sum(durations[u] for u in cycle) / shifts)
    return best


def test_split_points_granularity_and_errors():
    assert split_points(1024, 3, 16) == [0, 336, 688, 1024]
    assert split_points(100, 1) == [0, 100]
    with pytest.raises(ValueError, match="cannot be split into 4"):
        split_points(32, 4, 16)


def test_expand_links_overlapping_token_ranges(make_chain):
    nano = expand(make_chain(["gemm", "attn"]), 1024, {"COMPUTE": 2, "MEMORY": 4})
    assert set(nano.predecessors("attn#1")) == {"gemm#0"}
    assert set(nano.successors("attn#3")) == {"gemm#1"} and nano.edges["attn#3", "gemm#1"]["shift"] == 1


@pytest.mark.parametrize("seed", range(6))
def test_period_matches_cycle_enumeration(make_chain, seed):
    rng = np.random.default_rng(seed)
    nano = expand(make_chain(["qkv", "attn", "o"]), 512, {"COMPUTE": int(rng.integers(1, 4)),
                                                          "MEMORY": int(rng.integers(1, 4))})
    durations = {n: float(rng.uniform(1, 10)) for n in nano}
    orders = {}
    for n in nx.topological_sort(nx.DiGraph([(u, v) for u, v, s in nano.edges(data="shift") if s == 0])):
        orders.setdefault(nano.nodes[n]["stream"], []).append(n)
    for n in nano:  # ops without in-layer edges
        if all(n not in o for o in orders.values()):
            orders.setdefault(nano.nodes[n]["stream"], []).append(n)
    assert period(nano, orders, durations) == pytest.approx(cycle_ratio_by_enumeration(nano, orders, durations))


def test_deadlocking_order_is_reported(make_chain):
    nano = expand(make_chain(["qkv", "attn", "o"]), 256, {"COMPUTE": 1, "MEMORY": 1})
    with pytest.raises(DeadlockError, match="deadlock"):
        period(nano, {"COMPUTE": ["o#0", "qkv#0"], "MEMORY": ["attn#0"]}, {n: 1.0 for n in nano})
