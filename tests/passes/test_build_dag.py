import networkx as nx
import torch
from passes_graphs import kv_layer, projected_attention

from nanoflow_compiler.passes.build_dag import transitive_reduction


def named(ctx, graph):
    """Edges as (node, nano-batch span) pairs, for the device ops of the first bucket."""
    work = ctx.work[ctx.buckets[0]]
    cuts = work.cuts
    label = {n.op.id: (n.op.node, None if n.op.seg is None else (cuts[n.op.seg[0]], cuts[n.op.seg[1]])) for n in work.ops}
    return {(label[u], label[v]) for u, v in graph.edges}


def test_transitive_reduction_drops_implied_edges():
    dag = nx.DiGraph([(0, 1), (1, 2), (0, 2), (0, 3), (3, 2), (2, 4), (0, 4)])
    assert set(transitive_reduction(dag).edges) == {(0, 1), (1, 2), (0, 3), (3, 2), (2, 4)}


def test_chain_of_split_nodes_depends_nano_batch_by_nano_batch(trace, mlp):
    fn, args = mlp
    _, ctx = trace(fn, *args, params=("w1", "w2"), options={"nano_batches": 2}, until="build_dag")
    first, second = (0, 4), (4, 8)
    assert named(ctx, ctx.work[8].reduced) == {
        (("mm", first), ("relu", first)), (("relu", first), ("mm_1", first)),
        (("mm", second), ("relu", second)), (("relu", second), ("mm_1", second)),
    }
    full = ctx.work[8].dag
    kinds = {d["kind"] for _, _, d in full.edges(data=True)}
    assert kinds == {"object", "data"}  # allocations and views reach their users by object edges


def test_classes_with_different_counts_depend_on_every_overlapping_nano_op(trace, kv_inputs):
    q, *rest = kv_inputs
    _, ctx = trace(projected_attention, torch.randn(6, 5), torch.randn(5, 32), *rest, params=("w",),
                   options={"nano_batches": {"COMPUTE": 2, "MEMORY": 3}}, until="build_dag")
    edges = named(ctx, ctx.work[6].reduced)
    into = {}
    for u, v in edges:
        into.setdefault(v, set()).add(u)
    assert into[("paged_attention", (0, 2))] == {("mm", (0, 3)), ("kv_append", (0, 2))}
    assert into[("paged_attention", (2, 4))] == {("mm", (0, 3)), ("mm", (3, 6)), ("kv_append", (0, 2)),
                                                 ("kv_append", (2, 4))}
    assert into[("paged_attention", (4, 6))] == {("mm", (3, 6)), ("kv_append", (0, 2)), ("kv_append", (2, 4)),
                                                 ("kv_append", (4, 6))}
    assert ("kv_append", (0, 2)) not in into  # appends of disjoint tokens do not wait for each other


def test_cache_readers_run_before_a_later_append(trace, kv_inputs):
    def fn(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
        before = torch.ops.nanoflow.paged_attention(q, k_cache, v_cache, block_tables, token_req, positions, 0.25)
        return before + kv_layer(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables)

    _, ctx = trace(fn, *kv_inputs, options={"nano_batches": 2}, until="build_dag")
    edges = named(ctx, ctx.work[6].reduced)
    # the first attention over tokens [s, e) reads the slots of tokens [0, e): their appends must wait for it
    assert (("paged_attention", (0, 3)), ("kv_append", (0, 3))) in edges
    assert (("paged_attention", (3, 6)), ("kv_append", (0, 3))) in edges
    assert (("paged_attention", (3, 6)), ("kv_append", (3, 6))) in edges
    assert (("paged_attention", (0, 3)), ("kv_append", (3, 6))) not in edges
