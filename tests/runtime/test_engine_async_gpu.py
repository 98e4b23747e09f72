"""Async scheduling on the GPU through the nanoflow CUDA-graph executor: the next iteration's decode rows read the
previous iteration's sampled tokens on the device, while those come from a graph's static logits buffer that the
next replay overwrites. The tokens equal the synchronous engine's. The workload finishes requests by length only,
so that both modes run the very same batches (an EOS seen a step late adds a row, which may change bf16 rounding)."""

from __future__ import annotations

import pytest
import torch
from nanoflow_compiler.models import preset_config, random_model
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.runtime.sampling import SamplingParams

pytestmark = pytest.mark.gpu

OPTIONS = {"executor": "graph", "nano_batches": {"COMPUTE": 2, "MEMORY": 2}, "min_overlap_tokens": 1}


def generate(async_scheduling: bool | None) -> tuple[list[list[int]], LLMEngine]:
    torch._dynamo.reset()
    config = preset_config("llama-3-8b", num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    model = random_model(config, torch.bfloat16, "cuda")
    engine = LLMEngine(model, None, EngineConfig(max_num_batched_tokens=64, num_kv_blocks=64, block_size=16,
                                                 compile_options=OPTIONS, async_scheduling=async_scheduling))
    gen = torch.Generator().manual_seed(0)
    lengths, max_tokens = [5, 90, 17, 1, 40, 3, 64, 12], [12, 7, 1, 20, 9, 16, 5, 11]
    for i, (n, m) in enumerate(zip(lengths, max_tokens, strict=True)):
        params = (SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=m, ignore_eos=True) if i % 3 == 2
                  else SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True))
        engine.add_request(str(i), torch.randint(0, 512, (n,), generator=gen).tolist(), params)
    final = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[int(out.request_id)] = out.token_ids
    assert [len(final[i]) for i in range(len(lengths))] == max_tokens
    return [final[i] for i in range(len(lengths))], engine


def test_async_scheduling_equals_sync_through_the_graph_executor():
    sync, sync_engine = generate(False)
    async_, engine = generate(None)  # the CUDA default
    assert engine.async_scheduling and not sync_engine.async_scheduling
    status = engine.runner.executor_status()
    assert status and all(s["executor"] == "graph" for s in status), status
    assert sum(s["replays"] for s in status) > 0
    assert async_ == sync
    stats = engine.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"] and stats["num_steps"] == sync_engine.stats()["num_steps"]
