"""Per-op timings of one call (runtime/executors/timings.py) on the CPU: one record per stream op that ran, with its
planned stream, class, nano-batch and the caller's layer, in call order; the executor is restored afterwards, and a
graph the backend could not schedule is refused with a clear error."""

from __future__ import annotations

import pytest
import torch
from executor_batches import fill_caches, mixed_batch
from nanoflow_compiler.runtime.executors.timings import step_timings

from nanoflow_compiler import backend

BLOCK = 4


def compiled_tiny(tiny_config, options):
    from nanoflow_compiler.models import random_model

    model = random_model(tiny_config(), torch.float32, "cpu")
    ids, pos, meta, blocks = mixed_batch(model.config.vocab_size, BLOCK)
    fill_caches(model, blocks + 8, BLOCK, torch.float32, "cpu")
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=False, fullgraph=True,
                           options={"executor": "sequential", **options})
        expected = fn(ids, pos, meta).clone()
    return fn, compiled[0], (ids, pos, meta), expected


def test_one_record_per_stream_op_in_call_order_with_nano_batch_and_layer(tiny_config):
    fn, schedule, batch, expected = compiled_tiny(tiny_config, {"nano_batches": {"COMPUTE": 2, "MEMORY": 3}})
    executor = schedule.executor
    bucket = schedule.ir.buckets[0]
    layer_of = {op.id: op.id % 3 for op in bucket.ops}
    with step_timings(schedule, layer_of) as records, torch.no_grad():
        out = fn(*batch)
    assert schedule.executor is executor
    torch.testing.assert_close(out, expected)
    ran = [op for op in bucket.ops if op.stream is not None and
           (op.seg is None or bucket.cuts[op.seg[0]] != bucket.cuts[op.seg[1]])]
    assert [r.op_id for r in records] == [op.id for op in ran]
    names = {s.id: f"{'+'.join(s.classes)} ({s.sms} SMs)" for s in bucket.streams}
    assert [r.stream for r in records] == [names[op.stream] for op in ran]
    assert all(0 <= r.start_ms <= r.end_ms for r in records)
    assert all(a.end_ms <= b.start_ms for a, b in zip(records, records[1:]))  # the CPU runs them one by one
    attention = [r for r in records if r.target == "nanoflow.paged_attention.default"]
    assert sorted({r.nano_batch for r in attention}) == [0, 1, 2]
    assert all(r.layer == r.op_id % 3 for r in records)
    row = attention[0].to_json()
    assert row["class"] == "memory" and {"stream", "op", "start_ms", "end_ms", "layer"} <= set(row)


def test_fallback_graphs_are_refused():
    fallback = backend.EagerFallback(None, "the passes failed")
    with pytest.raises(ValueError, match="the passes failed"):
        with step_timings(fallback):
            pass
