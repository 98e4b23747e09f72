"""Per-op CUDA-event timings of the stream executor on the GPU, and of a graph executor through its stream executor:
every op that ran has a record on its planned stream, the two streams overlap in time, the outputs are the untimed
call's, and the executor is restored."""

from __future__ import annotations

import pytest
import torch
from executor_batches import fill_caches, mixed_batch

from nanoflow_compiler import backend
from nanoflow_compiler.models import preset_config, random_model
from nanoflow_compiler.runtime.executors.timings import step_timings

pytestmark = pytest.mark.gpu

BLOCK = 16


@pytest.mark.parametrize("executor", ["stream", "graph"])
def test_events_on_each_stream_match_the_plan(executor):
    config = preset_config("llama-3-8b", num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    model = random_model(config, torch.bfloat16, "cuda")
    ids, pos, meta, blocks = mixed_batch(config.vocab_size, BLOCK, "cuda")
    fill_caches(model, blocks + 8, BLOCK, torch.bfloat16, "cuda")
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=False, fullgraph=True,
                           # unfused: the check below counts one record per planned op, and a fused group of
                           # LIGHT ops (on by default on CUDA) records once for all its members
                           options={"executor": executor, "nano_batches": {"COMPUTE": 2, "MEMORY": 2},
                                    "fuse_light": False})
        fn(ids, pos, meta)
        expected = fn(ids, pos, meta).clone()
        schedule = compiled[0]
        inner = schedule.executor
        with step_timings(schedule) as records:
            out = fn(ids, pos, meta)
    assert schedule.executor is inner
    torch.testing.assert_close(out, expected)
    bucket = schedule.ir.buckets[0]
    ran = {op.id for op in bucket.ops if op.stream is not None and
           (op.seg is None or bucket.cuts[op.seg[0]] != bucket.cuts[op.seg[1]])}
    assert {r.op_id for r in records} == ran and len(records) == len(ran)
    assert all(0 <= r.start_ms <= r.end_ms for r in records)
    streams = {r.stream for r in records}
    assert len(streams) == 2
    spans = {s: (min(r.start_ms for r in records if r.stream == s), max(r.end_ms for r in records if r.stream == s))
             for s in streams}
    (a0, a1), (b0, b1) = spans.values()
    assert max(a0, b0) < min(a1, b1)  # the streams' busy windows overlap: they ran side by side
