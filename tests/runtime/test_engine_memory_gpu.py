"""Two engines one after another in one process on the GPU, the second built while the model still holds the first
one's KV cache (as `LLM` users and the benchmarks do). On an H200 the second engine got a cache of a few blocks: it
reset the memory peak before dropping that cache, so the peak counted it. The second engine must get as many blocks,
and the first cache must be gone once the second engine replaced it; if not, the test names who refers to it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from nanoflow_compiler.models import preset_config, random_model
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.runtime.sampling import SamplingParams

from nanoflow_compiler.bench import runner

pytestmark = pytest.mark.gpu


def _serve(model) -> tuple[int, weakref.ref]:
    """An engine (the CUDA defaults: nanoflow backend, buckets, graphs, async scheduling) serving a few requests."""
    engine = LLMEngine(model, None, EngineConfig(max_num_batched_tokens=256, max_num_seqs=16,
                                                 kv_cache_memory_fraction=0.3))
    for i in range(8):
        engine.add_request(str(i), list(range(1, 100 + i)), SamplingParams(max_tokens=8, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    return engine.stats()["num_total_blocks"], weakref.ref(model.layers[0].self_attn.k_cache)


def _holders(obj, depth: int = 5) -> list[str]:
    """Chains of referrers of `obj` (type names, dict keys), `depth` levels up, leaving out this function's own
    frames and lists (plain loops: a comprehension would make `x` a closure cell that shows up as a holder)."""
    chains, seen = [], {id(obj)}

    def walk(x, path: list[str], level: int) -> None:
        found = gc.get_referrers(x)
        refs: list = []
        seen.update((id(found), id(refs)))
        for r in found:
            if id(r) not in seen and type(r).__name__ != "frame":
                refs.append(r)
        if level == depth or not refs:
            chains.append(" <- ".join(path))
            return
        for i in range(min(4, len(refs))):  # by index: a slice would be one more list referring to r
            r = refs[i]
            seen.add(id(r))
            label = type(r).__name__
            if isinstance(r, dict):
                keys = []
                for k, v in r.items():
                    if v is x:
                        keys.append(str(k))
                label += "{" + ", ".join(keys)[:80] + "}"
            walk(r, [*path, label], level + 1)

    walk(obj, ["k_cache"], 0)
    return chains


def test_a_second_engine_gets_the_memory_the_first_one_held():
    torch._dynamo.reset()
    config = preset_config("llama-3-8b", num_hidden_layers=2, vocab_size=1024)
    model = random_model(config, torch.bfloat16, "cuda")
    first, cache = _serve(model)
    runner.release()  # what the benchmarks do between engines; the model keeps the first cache until the next engine
    second, _ = _serve(model)
    gc.collect()
    held = cache()
    if held is not None:
        chains = "\n".join(_holders(held))
        del held
        pytest.fail(f"the first engine's KV cache outlived the engine; referrers:\n{chains}")
    assert second >= 0.95 * first, (first, second)
