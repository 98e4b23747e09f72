import pytest
import torch
from passes_graphs import kv_layer

from nanoflow_compiler.passes.context import NanoflowWarning
from nanoflow_compiler.runtime.executors.sequential import SequentialExecutor
from nanoflow_compiler.runtime.ir import ScheduleIR


def test_ir_names_inputs_symbols_and_plans_every_bucket(trace, mlp):
    fn, args = mlp
    _, ctx = trace(fn, *args, params=("w1", "w2"), options={"token_buckets": [4, 8, 16]})
    ir = ctx.ir
    assert [(i.name, i.kind, i.token_dim) for i in ir.signature.inputs] == [
        ("x", "input", 0), ("w1", "parameter", None), ("w2", "parameter", None)]
    assert ir.signature.inputs[0].shape[0] == "T" and ir.symbols["T"] == [[0, 0]]
    assert [b.tokens for b in ir.buckets] == [4, 8, 16]
    assert ir.provenance.executor == "sequential" and ir.provenance.plan_source == "analytical"
    assert ir.provenance.options["token_buckets"] == [4, 8, 16]


def test_any_token_count_runs_from_the_nearest_bucket(trace, mlp):
    fn, (x, w1, w2) = mlp
    _, ctx = trace(fn, x, w1, w2, params=("w1", "w2"), options={"nano_batches": 4, "token_buckets": [8, 32]})
    for tokens in (1, 3, 8, 13, 40):  # fewer tokens than nano-batches leaves some nano-ops empty
        xs = torch.randn(tokens, 16)
        torch.testing.assert_close(ctx.module(xs, w1, w2), fn(xs, w1, w2))
    programs = ctx.module.executor.programs._programs
    assert {p.bucket.tokens for p in programs.values()} == {8, 32}
    assert [p.cuts for p in programs.values() if p.tokens == 13] == [[0, 3, 7, 10, 13]]  # the cuts 2, 4, 6 of 8 tokens, scaled


def test_reloaded_ir_runs_without_the_passes(trace, kv_inputs):
    _, ctx = trace(kv_layer, *kv_inputs, options={"nano_batches": 3, "split": {6: [1, 2, 3]}, "token_buckets": [6]})
    reloaded = ScheduleIR.from_json(ctx.ir.to_json())
    assert reloaded == ctx.ir
    eager_inputs, inputs = [t.clone() for t in kv_inputs], [t.clone() for t in kv_inputs]
    expected = kv_layer(*eager_inputs)
    torch.testing.assert_close(SequentialExecutor(reloaded, ctx.constants)(inputs), expected)
    torch.testing.assert_close(inputs[3], eager_inputs[3])  # the K cache got the same appends
    torch.testing.assert_close(inputs[4], eager_inputs[4])


def test_unavailable_executor_falls_back_and_says_so(trace, mlp):
    fn, args = mlp
    with pytest.warns(NanoflowWarning, match="executor 'stream' cannot run here"):
        _, ctx = trace(fn, *args, params=("w1", "w2"), options={"executor": "stream"})
    assert ctx.ir.provenance.executor == "sequential"
    assert any("executor 'stream'" in note for note in ctx.ir.provenance.notes)
    torch.testing.assert_close(ctx.module(*args), fn(*args))
