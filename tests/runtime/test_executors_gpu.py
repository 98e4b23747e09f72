"""The stream and CUDA-graph executors against the sequential reference on the GPU (bf16): a tiny Llama and a
2-layer Llama-3-8B-shaped model with random weights, on mixed prefill + decode batches, logits and KV appends."""

from __future__ import annotations

import pytest
import torch
from executor_batches import caches, fill_caches, mixed_batch

from nanoflow_compiler import backend
from nanoflow_compiler.models import preset_config, random_model

pytestmark = pytest.mark.gpu

BLOCK = 16
OPTIONS = {"nano_batches": {"COMPUTE": 2, "MEMORY": 3}}  # default SM plan: 96 COMPUTE / 36 MEMORY on 132 SMs
DECODE = [(40, 1), (17, 1), (3, 1), (70, 1)]  # another binding: 4 decode tokens, 3 padding, 5-block tables


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def model_for(name: str):
    overrides = {"num_hidden_layers": 2}
    if name == "tiny":
        overrides.update(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=512)
    return random_model(preset_config("llama-3-8b", **overrides), torch.bfloat16, "cuda")


def batches(vocab: int):
    """Batch A (mixed), batch B (decode only, another binding), batch A again with other token ids."""
    a_ids, pos, meta, blocks = mixed_batch(vocab, BLOCK, "cuda")
    b_ids, b_pos, b_meta, b_blocks = mixed_batch(vocab, BLOCK, "cuda", requests=DECODE, pad=3, seed=3)
    other = torch.randint(0, vocab, a_ids.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    return [(a_ids, pos, meta), (b_ids, b_pos, b_meta), (other, pos, meta)], max(blocks, b_blocks)


def prepared(name: str):
    """The model, its batches and the cache contents every executor starts from (seeded: the same in every test)."""
    torch.manual_seed(0)
    model = model_for(name)
    inputs, blocks = batches(model.config.vocab_size)
    fill_caches(model, blocks + 4, BLOCK, torch.bfloat16, "cuda")
    return model, inputs, [c.clone() for c in caches(model)]


def run_executor(model, executor: str, inputs, initial, options=OPTIONS):
    """Compile with `executor`, then per batch: restore the caches, run, keep logits and the written KV slots."""
    torch._dynamo.reset()
    results = []
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True,
                           options={"executor": executor, **options})
        for ids, pos, meta in inputs:
            for cache, saved in zip(caches(model), initial):
                cache.copy_(saved)
            logits = fn(ids, pos, meta).clone()  # graph outputs are static buffers: consume before the next call
            slots = meta.slot_mapping[meta.slot_mapping >= 0]
            written = [c.flatten(0, 1)[slots].clone() for c in caches(model)]
            results.append((logits, written))
    torch.cuda.synchronize()
    assert len(compiled) == 1 and compiled[0].ir is not None, "the backend fell back or recompiled"
    assert compiled[0].ir.provenance.executor == executor, compiled[0].ir.provenance.notes
    return results, compiled[0].executor


@pytest.mark.parametrize("name", ["tiny", "llama-3-8b-2-layers"])
def test_stream_and_graph_executors_equal_the_sequential_one(name):
    model, inputs, initial = prepared(name)
    reference, _ = run_executor(model, "sequential", inputs, initial)
    streamed, stream_exec = run_executor(model, "stream", inputs, initial)
    graphed, graph_exec = run_executor(model, "graph", inputs, initial)
    print(name, "stream:", stream_exec.status())
    print(name, "graph:", graph_exec.status())
    for i, ((ref, ref_kv), (s, s_kv), (g, g_kv)) in enumerate(zip(reference, streamed, graphed)):
        errs = {"stream": rel_err(s, ref), "graph": rel_err(g, ref), "graph-vs-stream": rel_err(g, s),
                "kv": max(rel_err(a, b) for a, b in zip(s_kv, ref_kv))}
        print(f"{name} batch {i}: logits {tuple(ref.shape)}, relative errors {errs}, "
              f"graph bitwise equal to stream: {torch.equal(g, s)}")
        assert errs["stream"] < 2e-2 and errs["graph"] < 2e-2 and errs["kv"] < 2e-2, errs
        assert errs["graph-vs-stream"] < 1e-3, "replay must compute what the stream executor computes"
        for a, b in zip(g_kv, s_kv):
            assert rel_err(a, b) < 1e-3
    status = graph_exec.status()
    assert status["captures"] == 2 and status["replays"] == 3 and status["recaptures"] == 0, status
    assert len(status["layouts"][0]) == 2  # COMPUTE and MEMORY streams


def test_streams_run_on_disjoint_partitions_that_share_out_the_device():
    model = model_for("tiny")
    inputs, blocks = batches(model.config.vocab_size)
    fill_caches(model, blocks + 4, BLOCK, torch.bfloat16, "cuda")
    _, executor = run_executor(model, "stream", inputs[:1], [c.clone() for c in caches(model)])
    status = executor.status()
    assert status["disjoint"], status["fallback_reason"]
    parts = {entry["partition"]["name"]: entry["sms"] for entry in status["layouts"][0]}
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert parts["COMPUTE"] + parts["MEMORY"] == sms


def test_overlap_off_runs_on_the_callers_stream_in_one_graph():
    model = model_for("tiny")
    inputs, blocks = batches(model.config.vocab_size)
    fill_caches(model, blocks + 4, BLOCK, torch.bfloat16, "cuda")
    initial = [c.clone() for c in caches(model)]
    reference, _ = run_executor(model, "sequential", inputs, initial, {"overlap": False})
    graphed, executor = run_executor(model, "graph", inputs, initial, {"overlap": False})
    assert executor.status()["layouts"][0][0]["partition"] is None
    for (ref, _), (g, _) in zip(reference, graphed):
        print(f"overlap off: graph replay bitwise equal to sequential: {torch.equal(g, ref)}")
        assert rel_err(g, ref) < 1e-2  # the same kernels, captured on a side stream and replayed


def test_sm_counts_the_device_cannot_give_are_a_clear_error():
    model = model_for("tiny")
    inputs, blocks = batches(model.config.vocab_size)
    fill_caches(model, blocks + 4, BLOCK, torch.bfloat16, "cuda")
    options = {"device_sms": 264, "sm_plan": {"COMPUTE": 200, "MEMORY": 64}}  # twice the H100's SMs
    with pytest.raises(Exception, match=r"partitions ask for 264 SMs .* but the device has \d+"):
        run_executor(model, "stream", inputs[:1], [c.clone() for c in caches(model)], options)


def test_released_graphs_are_captured_again_on_the_next_call():
    """What the process group's teardown does first (`graph.release_graphs`); the executor still works after it."""
    from nanoflow_compiler.runtime.executors import graph

    model, inputs, initial = prepared("tiny")
    ids, pos, meta = inputs[0]
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True,
                           options={"executor": "graph", **OPTIONS})
        first = fn(ids, pos, meta).clone()
        executor = compiled[0].executor
        assert graph.release_graphs() >= 1 and executor.status()["graphs"] == 0
        for cache, saved in zip(caches(model), initial):
            cache.copy_(saved)
        again = fn(ids, pos, meta).clone()
    assert executor.status()["captures"] == 2 and executor.status()["graphs"] == 1
    assert rel_err(again, first) < 1e-3
