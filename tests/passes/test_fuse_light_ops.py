"""fuse_light_ops groups the LIGHT nano-ops of one stream and segment, moves them together in the issue order and
lets only a group's first op wait for another stream."""

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from passes_graphs import kv_layer, projected_attention

FUSE = {"fuse_light": True}


def norm_mlp(x, w_norm, w1, w2):
    """RMSNorm, a gate/up GEMM, SiLU*mul, a down GEMM and a residual add."""
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w_norm
    g, u = (h @ w1).chunk(2, -1)
    return (F.silu(g) * u) @ w2 + x


def attention_then_light(x, w, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
    return (projected_attention(x, w, k, v, k_cache, v_cache, slots, token_req, positions, block_tables) * 2 + 1).relu()


def light_meets_attention(x, w, k, v, k_cache, v_cache, slots, token_req, positions, block_tables):
    """relu and sigmoid of a GEMM's output are ready at once; the add also needs attention (another stream)."""
    h = x @ w
    o = kv_layer(h.view(-1, 4, 8), k, v, k_cache, v_cache, slots, token_req, positions, block_tables)
    return h.relu().sigmoid() + o.view(-1, 32)


@pytest.fixture
def mlp_args():
    return torch.randn(8, 16), torch.randn(16), torch.randn(16, 64), torch.randn(32, 16)


@pytest.fixture
def attention_args(kv_inputs):
    _, *rest = kv_inputs
    return (torch.randn(6, 5), torch.randn(5, 32), *rest)


def groups_of(bucket) -> dict[int, list]:
    groups: dict[int, list] = {}
    for op in bucket.ops:
        if op.group is not None:
            groups.setdefault(op.group, []).append(op)
    return groups


def test_each_segment_of_a_light_run_is_one_group(trace, mlp_args):
    _, ctx = trace(norm_mlp, *mlp_args, params=("w_norm", "w1", "w2"), options={"nano_batches": 2, **FUSE})
    groups = groups_of(ctx.ir.buckets[0])
    assert [([op.node for op in g], g[0].seg) for g in groups.values()] == [
        (["pow_1", "mean", "add", "rsqrt", "mul", "mul_1"], (0, 1)),
        (["pow_1", "mean", "add", "rsqrt", "mul", "mul_1"], (1, 2)),
        (["silu", "mul_2"], (0, 1)),
        (["silu", "mul_2"], (1, 2)),
    ]  # the residual adds of the two segments follow each other alone: no group of one
    ops = ctx.ir.buckets[0].ops
    for members in groups.values():  # consecutive in the issue order, one stream, one segment
        first = ops.index(members[0])
        assert ops[first:first + len(members)] == members
        assert len({(op.stream, op.seg, op.cls) for op in members}) == 1


def test_reordering_keeps_every_dependency(trace, mlp_args):
    _, ctx = trace(norm_mlp, *mlp_args, params=("w_norm", "w1", "w2"), options={"nano_batches": 3, **FUSE})
    work = ctx.work[8]
    position = {op: i for i, op in enumerate(work.order)}
    assert sorted(work.order) == sorted(work.dag.nodes)
    assert all(position[u] < position[v] for u, v in work.dag.edges)


def test_a_group_may_start_with_a_wait(trace, attention_args):
    _, ctx = trace(attention_then_light, *attention_args, params=("w",),
                   options={"nano_batches": {"COMPUTE": 2, "MEMORY": 3}, **FUSE})
    groups = list(groups_of(ctx.ir.buckets[0]).values())
    assert [[op.node for op in g] for g in groups] == [["mul", "add", "relu"]] * 2
    assert all(g[0].waits for g in groups)  # each waits for the attention of its tokens, once


def test_only_a_groups_first_op_waits_for_another_stream(trace, attention_args):
    _, ctx = trace(light_meets_attention, *attention_args, params=("w",), options={"nano_batches": 2, **FUSE})
    bucket = ctx.ir.buckets[0]
    groups = list(groups_of(bucket).values())
    assert [[op.node for op in g] for g in groups] == [["relu", "sigmoid"]] * 2
    adds = [op for op in bucket.ops if op.node == "add" and op.kind == "compute"]
    assert all(op.waits and op.group is None for op in adds)  # the add waits for attention: it starts no group
    work = ctx.work[6]
    ops = {n.op.id: n.op for n in work.ops}
    hb = nx.DiGraph()  # what the streams' order and the recomputed waits enforce
    last: dict = {}
    for i in work.order:
        if ops[i].stream is not None:
            hb.add_node(i)
            if ops[i].stream in last:
                hb.add_edge(last[ops[i].stream], i)
            last[ops[i].stream] = i
            hb.add_edges_from((w, i) for w in ops[i].waits)
    assert all(nx.has_path(hb, u, v) for u, v in work.reduced.edges)


@pytest.mark.parametrize("options", [{}, {"fuse_light": False}, {"fuse_light": True, "overlap": False}])
def test_fusion_is_off_on_cpu_by_default(trace, mlp_args, options):
    _, ctx = trace(norm_mlp, *mlp_args, params=("w_norm", "w1", "w2"), options={"nano_batches": 2, **options})
    groups = groups_of(ctx.ir.buckets[0])
    if options.get("fuse_light"):  # one segment: one group per LIGHT run
        assert [len(g) for g in groups.values()] == [6, 2]
    else:
        assert groups == {}


def test_unsplit_light_ops_group_too_and_hand_on_their_named_results(trace):
    def barrier(x):  # the sort mixes tokens: it and the sigmoid run unsplit, their results are named values
        return (torch.sort(x, dim=0).values.sigmoid() + x) * 2

    x = torch.randn(8, 6)
    _, ctx = trace(barrier, x, options={"nano_batches": 2, **FUSE})
    groups = list(groups_of(ctx.ir.buckets[0]).values())
    assert [([op.node for op in g], g[0].seg) for g in groups] == [
        (["sort", "sigmoid"], None), (["add", "mul"], (0, 1)), (["add", "mul"], (1, 2))]
    torch.testing.assert_close(ctx.module(x), barrier(x))  # inductor, on the CPU here
    status = ctx.module.executor.status()
    assert status["fused_groups"] == 3 and status["fusion_fallback"] is None
