import warnings

import pytest
import torch
from passes_graphs import kv_layer, node_info

from nanoflow_compiler.passes.context import INFO, NanoflowWarning


def modes(gm):
    return {n.name: (n.meta[INFO].mode, n.meta[INFO].token_dims) for n in gm.graph.nodes if n.op == "call_function"}


def test_mlp_splits_everywhere_along_dim_0(trace, mlp):
    fn, args = mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error", NanoflowWarning)
        gm, ctx = trace(fn, *args, params=("w1", "w2"))
    assert modes(gm) == {"mm": ("split", [0]), "relu": ("split", [0]), "mm_1": ("split", [0])}
    assert ctx.ir.provenance.notes == []


def test_flattened_batch_keeps_the_token_dim_with_a_factor(trace):
    """HF style: [B, S, H] -> [B*S, H] -> GEMM -> [B, S, N]: B is the token dim, S rows per token in the GEMM."""
    def fn(x, w):
        return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[0], x.shape[1], -1)

    gm, ctx = trace(fn, torch.randn(4, 6, 8), torch.randn(8, 3), params=("w",))
    info = modes(gm)
    assert info["view"] == ("view", [0]) and info["mm"] == ("split", [0]) and info["view_1"] == ("view", [0])
    mm_op = next(op for op in ctx.ir.buckets[0].ops if op.target == "aten.mm.out")
    seq_len = str(node_info(gm, "view").shapes[0][0] / ctx.token)
    assert mm_op.args[0].factor == seq_len != "1"


def test_transposed_token_dim_splits_gemm_columns(trace):
    def fn(x, w):
        return w.t() @ x.t()

    gm, _ = trace(fn, torch.randn(8, 4), torch.randn(4, 3), params=("w",))
    info = modes(gm)
    assert info["t_1"] == ("view", [1])
    assert info["mm"] == ("split", [1])
    assert node_info(gm, "mm").narrow == {("mat2",): 1}


def test_reductions_split_over_other_dims_and_stop_at_the_token_dim(trace):
    def fn(x):
        return x.softmax(-1) + x.sum(0)

    gm, ctx = trace(fn, torch.randn(8, 4), until="find_token_dim")
    info = modes(gm)
    assert info["_softmax"] == ("split", [0])
    assert info["sum_1"][0] == "whole" and node_info(gm, "sum_1").barrier == "reduces, scans or sorts over the token dim"
    assert info["add"] == ("split", [0])  # the reduced row broadcasts along the tokens


def test_barriers_warn_once_per_reason_naming_the_nodes(trace):
    def fn(x, idx):
        a = torch.sort(x, dim=0).values
        b = torch.sort(x * 2, dim=0).values
        return a + b, x[idx]

    with pytest.warns(NanoflowWarning) as record:
        gm, ctx = trace(fn, torch.randn(8, 4), torch.tensor([1, 5, 2]))
    messages = [str(w.message) for w in record if issubclass(w.category, NanoflowWarning)]
    sort = [m for m in messages if "sort" in m]
    assert len(sort) == 1 and "2 node(s)" in sort[0] and "sort," in sort[0] and "sort_1" in sort[0]
    assert any("aten.index.Tensor gathers rows of the token dim by index (index)" in m for m in messages)
    assert modes(gm)["add"] == ("whole", [None])  # both inputs come from barriers: no token dim left
    assert len(ctx.ir.provenance.notes) == len(messages)


def test_lost_token_dim_runs_whole_without_warning(trace):
    def fn(x):
        return x.t().reshape(-1) * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error", NanoflowWarning)
        gm, _ = trace(fn, torch.randn(8, 4))
    info = modes(gm)
    assert info["t"] == ("view", [1]) and info["clone"] == ("split", [1])  # reshape copies the transposed view
    assert info["_unsafe_view"] == ("view", [None])  # flattening [H, T] interleaves tokens
    assert info["mul_3"] == ("whole", [None])


def test_kv_append_and_paged_attention_split_per_token(trace, kv_inputs):
    gm, ctx = trace(kv_layer, *kv_inputs, until="find_token_dim")
    assert sorted(ctx.seeds) == [0, 1, 2, 5, 6, 7]  # q, k, v, slots, token_req, positions
    append, attn = node_info(gm, "kv_append"), node_info(gm, "paged_attention")
    assert append.mode == attn.mode == "split"
    assert append.narrow == {("key",): 0, ("value",): 0, ("slot_mapping",): 0}
    assert attn.narrow == {("query",): 0, ("token_req",): 0, ("positions",): 0} and attn.token_dims == [0]
    assert append.causal == attn.causal == {("k_cache",), ("v_cache",)}
