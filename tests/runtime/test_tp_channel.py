"""Engine-level tensor parallelism over gloo (two spawned processes): greedy `LLM.generate` at TP=2 equals TP=1.

One launch serves the module: rank 0 runs three engines one after another (tiny Llama eager and compiled with the
nanoflow backend, tiny Mixtral eager) while rank 1 follows each, so the stop signal, a second engine in the same
process group and the KV-block agreement are all exercised. Prompts of mixed lengths with a 16-token budget make
iterations that mix chunked prefill with decode.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nanoflow_compiler import LLM, SamplingParams
from nanoflow_compiler.models import LoadedModel, preset_config, random_model
from nanoflow_compiler.runtime import distributed, model_runner
from nanoflow_compiler.runtime.tp_channel import follow, leading, open_channel

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
PROMPTS = [list(range(3, 22)), [11, 250, 64], list(range(40, 77)), [5, 17, 42, 7, 99, 3, 8, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
ENGINE = dict(max_num_batched_tokens=16, max_num_seqs=4)
CASES = {  # name: (preset, config overrides, compile)
    "llama": ("llama-3-8b", {}, False),
    "llama_compiled": ("llama-3-8b", {}, True),
    "mixtral": ("mixtral-8x7b", {"num_local_experts": 4}, False),
}
MEASURED_BLOCKS = (64, 56)  # what each rank "measures" for its KV cache in the llama case


def _llm(name: str) -> LLM:
    preset, overrides, compile_ = CASES[name]
    model = random_model(preset_config(preset, **TINY, **overrides), torch.float32, "cpu", seed=0)
    return LLM(LoadedModel(model, None, name, "preset"), compile=compile_, **ENGINE)


def _engines_worker() -> dict:
    rank = distributed.get_tp().rank
    out: dict = {}
    for name in CASES:
        measure = model_runner.ModelRunner._kv_blocks_from_memory
        if name == "llama":  # ranks measure different budgets; they must agree on the smallest
            model_runner.ModelRunner._kv_blocks_from_memory = lambda self: MEASURED_BLOCKS[rank]
        try:
            llm = _llm(name)
        finally:
            model_runner.ModelRunner._kv_blocks_from_memory = measure
        if rank == 0:
            with leading():
                out[name] = [o.token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        else:
            out[f"{name}_follower_steps"] = follow(llm.engine.runner)
        blocks = [None] * 2
        dist.all_gather_object(blocks, (llm.engine.runner.num_kv_blocks, out.get(f"{name}_follower_steps")))
        out[f"{name}_blocks_and_steps"] = blocks
        out[f"{name}_leader_steps"] = llm.engine.stats()["num_steps"]
    return out


@pytest.fixture(scope="module")
def tp2() -> dict:
    return distributed.launch(_engines_worker, 2, backend="gloo")


@pytest.mark.parametrize("name", list(CASES))
def test_tp2_greedy_equals_tp1(tp2, name):
    reference = [o.token_ids for o in _llm(name).generate(PROMPTS, GREEDY, use_tqdm=False)]
    assert all(len(ids) == GREEDY.max_tokens for ids in reference)
    assert len({tuple(ids) for ids in reference}) > 1  # not one degenerate answer for every prompt
    assert tp2[name] == reference


@pytest.mark.parametrize("name", list(CASES))
def test_follower_ran_every_iteration_of_rank_0(tp2, name):
    (_, none), (_, follower_steps) = tp2[f"{name}_blocks_and_steps"]
    assert none is None
    assert follower_steps == tp2[f"{name}_leader_steps"] > len(PROMPTS)  # chunked prefill took several steps


def test_ranks_agree_on_the_smallest_kv_cache(tp2):
    (blocks0, _), (blocks1, _) = tp2["llama_blocks_and_steps"]
    assert blocks0 == blocks1 == min(MEASURED_BLOCKS)
    (blocks0, _), (blocks1, _) = tp2["mixtral_blocks_and_steps"]
    assert blocks0 == blocks1


def _rank_0_leaves_without_stopping() -> None:
    llm = _llm("llama")
    if distributed.get_tp().rank != 0:
        follow(llm.engine.runner)


def test_a_follower_whose_rank_0_is_gone_says_so_instead_of_hanging():
    with pytest.raises(Exception, match="lost rank 0 while waiting for the next batch"):
        distributed.launch(_rank_0_leaves_without_stopping, 2, backend="gloo")


def test_single_process_has_no_channel():
    assert distributed.get_tp().size == 1
    assert open_channel(torch.device("cpu")) is None
