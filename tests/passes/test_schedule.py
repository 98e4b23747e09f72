import networkx as nx
import pytest
import torch
from passes_graphs import kv_layer, projected_attention

from nanoflow_compiler.passes.schedule import list_schedule


@pytest.fixture
def attention_layer(kv_inputs):
    q, *rest = kv_inputs
    return (torch.randn(6, 5), torch.randn(5, 32), *rest)


def happens_before(work):
    """Edges a multi-stream executor enforces: each stream's order plus the waits."""
    ops = {n.op.id: n.op for n in work.ops}
    hb = nx.DiGraph()
    last = {}
    for i in work.order:
        op = ops[i]
        if op.stream is None:
            continue
        hb.add_node(i)
        if op.stream in last:
            hb.add_edge(last[op.stream], i)
        last[op.stream] = i
        hb.add_edges_from((w, i) for w in op.waits)
    return hb


def test_one_stream_per_class_with_sm_shares(trace, attention_layer):
    _, ctx = trace(projected_attention, *attention_layer, params=("w",),
                   options={"nano_batches": 2, "sm_plan": {"COMPUTE": 96, "MEMORY": 32}})
    bucket = ctx.ir.buckets[0]
    assert [(s.id, s.classes, s.sms) for s in bucket.streams] == [(0, ["COMPUTE", "NETWORK", "LIGHT"], 96),
                                                                  (1, ["MEMORY"], 32)]
    streams = {op.node.rstrip("_0123456789"): op.stream for op in bucket.ops if op.kind == "compute"}
    assert streams == {"mm": 0, "kv_append": 1, "paged_attention": 1}
    assert all(op.stream is None for op in bucket.ops if op.kind != "compute")


def test_waits_are_exactly_the_cross_stream_dependencies(trace, attention_layer):
    _, ctx = trace(projected_attention, *attention_layer, params=("w",),
                   options={"nano_batches": {"COMPUTE": 2, "MEMORY": 3}})
    work = ctx.work[6]
    ops = {n.op.id: n.op for n in work.ops}
    hb = happens_before(work)
    for u, v in work.reduced.edges:
        assert nx.has_path(hb, u, v), f"dependency {ops[u].node}->{ops[v].node} is not enforced"
    waits = [(w, i) for i in work.order for w in ops[i].waits]
    assert waits and all(ops[w].stream != ops[i].stream for w, i in waits)
    for w, i in waits:  # each wait is needed: without it some dependency would go unenforced
        hb.remove_edge(w, i)
        assert any(not nx.has_path(hb, u, v) for u, v in work.reduced.edges)
        hb.add_edge(w, i)


def test_issue_order_is_topological_and_allocates_late(trace, attention_layer):
    _, ctx = trace(projected_attention, *attention_layer, params=("w",), options={"nano_batches": 2})
    work = ctx.work[6]
    position = {op: i for i, op in enumerate(work.order)}
    assert sorted(work.order) == sorted(work.dag.nodes)
    assert all(position[u] < position[v] for u, v in work.dag.edges)
    kinds = {n.op.id: n.op.kind for n in work.ops}
    for i, op in enumerate(work.order):
        if kinds[op] == "alloc":  # issued just before the first device op that needs it
            user = next(o for o in work.order[i:] if kinds[o] == "compute")
            assert nx.has_path(work.dag, op, user)


def test_overlap_off_is_one_stream_without_nano_batches(trace, attention_layer):
    _, ctx = trace(projected_attention, *attention_layer, params=("w",), options={"overlap": False})
    bucket = ctx.ir.buckets[0]
    assert len(bucket.streams) == 1 and bucket.streams[0].sms == ctx.options.device_sms
    assert bucket.cuts == [0, 6]
    assert all(op.waits == [] for op in bucket.ops)


def test_list_schedule_overlaps_two_streams():
    # a -> b (stream 0) and a -> c (stream 1), b and c independent: c runs beside b
    dag = nx.DiGraph([(0, 1), (0, 2), (1, 3), (2, 3)])
    order, makespan = list_schedule(dag, {0: 1.0, 1: 2.0, 2: 1.5, 3: 1.0}, {0: 0, 1: 0, 2: 1, 3: 0})
    assert order[0] == 0 and order[-1] == 3
    assert makespan == pytest.approx(4.0)


def test_whole_ops_are_waited_for_through_views(trace, kv_inputs):
    def fn(x, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
        q = torch.sort(x, dim=0).values.view(x.shape[0], 4, 8)  # a barrier (stream 0), seen through a view
        return kv_layer(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables)

    _, ctx = trace(fn, torch.randn(6, 32), *kv_inputs[1:], options={"nano_batches": 2})
    work = ctx.work[6]
    ops = {n.op.id: n.op for n in work.ops}
    (sort,) = [i for i, op in ops.items() if op.node == "sort" and op.kind == "compute"]
    attention = [i for i, op in ops.items() if op.node == "paged_attention" and op.kind == "compute"]
    assert all(work.reduced.has_edge(sort, i) or nx.has_path(work.reduced, sort, i) for i in attention)
    assert nx.has_path(happens_before(work), sort, attention[0])
