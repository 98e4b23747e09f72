"""The serving engine's default compile (the nanoflow backend) changes no greedy token of SmolLM2."""

import torch

from nanoflow_compiler import backend
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.runtime.sampling import SamplingParams


def _generate(engine, prompts, params):
    for i, ids in enumerate(prompts):
        engine.add_request(str(i), ids, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out.token_ids
    return [done[str(i)] for i in range(len(prompts))]


def test_greedy_smollm2_is_the_same_with_the_backend_on_and_off(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok.encode(p) for p in ("The capital of France is", "List three colours of the rainbow:")]
    params = SamplingParams(temperature=0.0, max_tokens=4)
    config = dict(max_num_batched_tokens=8, block_size=8, num_kv_blocks=16)  # chunked prefill beside decodes
    eager = _generate(LLMEngine(smollm2.model, tok, EngineConfig(compile=False, **config)), prompts, params)
    torch._dynamo.reset()
    try:
        with backend.capture() as compiled:
            engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=True, **config))
            assert engine.stats()["compile_backend"] == "nanoflow" and engine.stats()["compile_fallback"] is None
            got = _generate(engine, prompts, params)
        assert got == eager
        assert [s["executor"] for s in engine.runner.executor_status()] == ["sequential"] * len(compiled)
        assert compiled and all(c.ir is not None for c in compiled)  # no fallback to the traced graph
        inputs = {i.name: i.token_dim for i in compiled[0].ir.signature.inputs}
        assert [n for n, d in inputs.items() if d == 0] == ["input_ids", "positions", "meta.slot_mapping",
                                                             "meta.token_req"]
        assert any(op.target == "nanoflow.paged_attention.default" and op.seg is not None
                   for op in compiled[0].ir.buckets[0].ops)
    finally:
        torch._dynamo.reset()
