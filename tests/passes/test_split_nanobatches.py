import pytest
import torch
import torch.nn.functional as F
from passes_graphs import kv_layer

from nanoflow_compiler.runtime import ir


def ops_of(ctx, node):
    """The ops of one node in program order (the schedule may issue them in another)."""
    return sorted((op for op in ctx.ir.buckets[0].ops if op.node == node), key=lambda op: op.id)


def nanos_of(ctx, node):
    return [n for n in ctx.work[ctx.buckets[0]].ops if n.op.node == node]


def spans(ctx, ops):
    cuts = ctx.ir.buckets[0].cuts
    return [(cuts[op.seg[0]], cuts[op.seg[1]]) for op in ops]


def test_gemm_becomes_nano_ops_writing_slices_of_one_buffer(trace, mlp):
    fn, args = mlp
    _, ctx = trace(fn, *args, params=("w1", "w2"), options={"nano_batches": 3})
    alloc, *nanos = ops_of(ctx, "mm")
    assert alloc.kind == "alloc" and alloc.target == "aten.empty_strided.default" and alloc.outputs == ["mm"]
    assert [op.target for op in nanos] == ["aten.mm.out"] * 3
    assert spans(ctx, nanos) == [(0, 3), (3, 5), (5, 8)]
    assert all(op.kwargs["out"] == ir.Ref("mm", 0, "1") and op.args[0] == ir.Ref("x", 0, "1") for op in nanos)
    assert all(op.args[1] == ir.Ref("w1") for op in nanos)  # the weight is read whole by every nano-op


def test_uneven_fractions_and_per_class_counts(trace, kv_inputs):
    _, ctx = trace(kv_layer, *kv_inputs, options={"nano_batches": {"COMPUTE": 2, "MEMORY": 3}, "split": {"MEMORY": [0.5, 0.25, 0.25]}})
    bucket = ctx.ir.buckets[0]
    assert bucket.nano_batches == {"MEMORY": [3, 2, 1]}
    assert spans(ctx, [op for op in ops_of(ctx, "kv_append")]) == [(0, 3), (3, 5), (5, 6)]


def test_explicit_boundaries_per_bucket(trace, mlp):
    fn, args = mlp
    _, ctx = trace(fn, *args, params=("w1", "w2"), options={"split": {8: [1, 2, 5]}, "token_buckets": [8]})
    assert spans(ctx, ops_of(ctx, "relu")[1:]) == [(0, 1), (1, 3), (3, 8)]


def test_views_run_once_and_ops_without_out_variant_copy_into_the_buffer(trace, kv_inputs):
    def fn(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables, w):
        out = kv_layer(q, k, v, k_cache, v_cache, slots, token_req, positions, block_tables)
        return out.view(out.shape[0], -1) @ w

    _, ctx = trace(fn, *kv_inputs, torch.randn(32, 5), params=("w",), options={"nano_batches": 2})
    (view,) = ops_of(ctx, "view")
    assert view.kind == "view" and view.seg is None and view.args[0] == ir.Ref("paged_attention")
    attn = [op for op in ops_of(ctx, "paged_attention") if op.kind == "compute"]
    assert all(op.target == "nanoflow.paged_attention.default" and op.outputs == [None] for op in attn)
    assert all(op.copy_to == [ir.Ref("paged_attention", 0, "1")] for op in attn)
    assert [op.args[0] for op in ops_of(ctx, "mm")[1:]] == [ir.Ref("view", 0, "1")] * 2


def test_kv_cache_accesses_are_causal(trace, kv_inputs):
    _, ctx = trace(kv_layer, *kv_inputs, options={"nano_batches": 2})
    appends, attns = nanos_of(ctx, "kv_append"), [n for n in nanos_of(ctx, "paged_attention") if n.op.kind == "compute"]
    assert [n.writes for n in appends] == [[("k_cache", (0, 1)), ("v_cache", (0, 1))],
                                           [("k_cache", (1, 2)), ("v_cache", (1, 2))]]
    # attention over tokens [s, e) reads what the appends of tokens [0, e) wrote
    assert [dict(n.reads) for n in attns] == [
        {"q": (0, 1), "k_cache": (0, 1), "v_cache": (0, 1), "block_tables": None, "token_req": (0, 1), "positions": (0, 1)},
        {"q": (1, 2), "k_cache": (0, 2), "v_cache": (0, 2), "block_tables": None, "token_req": (1, 2), "positions": (1, 2)},
    ]


def _cases():
    def hf_linear(x, w):
        return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[0], x.shape[1], -1)

    def columns(x, w):
        return (w.t() @ x.t()).relu()

    def norms(x, w):
        return F.layer_norm(x, (x.shape[-1],)) * x.softmax(-1) + x.mean(-1, keepdim=True) @ w[:1]

    def gathers(x, table, ids):
        return torch.cat([table[ids], x], dim=-1).index_select(1, torch.tensor([0, 2]))

    def inplace(x):
        y = x.clone()
        y.add_(1).mul_(x)
        return y * 2

    def barrier(x):
        return torch.sort(x, dim=0).values.sigmoid() + x

    def batch_attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    x = torch.randn(8, 6)
    return [
        (hf_linear, (torch.randn(4, 3, 6), torch.randn(6, 5)), ("w",)),
        (columns, (x, torch.randn(6, 5)), ("w",)),
        (norms, (x, torch.randn(6, 6)), ("w",)),
        (gathers, (x, torch.randn(10, 3), torch.tensor([1, 2, 3, 4, 5, 6, 7, 9])), ("table",)),
        (inplace, (x,), ()),
        (barrier, (x,), ()),
        (batch_attention, (torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)), ()),
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0].__name__)
@pytest.mark.parametrize("k", [1, 3])
def test_nano_batched_results_equal_eager(trace, case, k):
    fn, args, params = case
    _, ctx = trace(fn, *args, params=params, options={"nano_batches": k})
    assert any(op.seg is not None for op in ctx.ir.buckets[0].ops) or fn.__name__ == "barrier"
    torch.testing.assert_close(ctx.module(*args), fn(*args), rtol=1e-5, atol=1e-5)
