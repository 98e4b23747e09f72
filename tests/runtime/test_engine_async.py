"""Async scheduling (iteration i+1 scheduled and launched before i's tokens reach the host) gives exactly the tokens
of the synchronous engine: greedy and seeded, stop tokens and strings, max_tokens 1, preemption, aborts in flight."""

import pytest
import torch
from nanoflow_compiler.models import random_model
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.runtime.sampling import SamplingParams
from test_engine import GREEDY
from test_engine import run as drain


def both(make, prompts, params, **config):
    """Run the workload with async scheduling off and on; checks the async engine drained and freed everything."""
    results = {}
    for mode in (False, True):
        engine = make(async_scheduling=mode, **config)
        assert engine.async_scheduling is mode
        finals, streamed = drain(engine, prompts, params)
        stats = engine.stats()
        assert stats["num_running"] == stats["num_waiting"] == 0
        assert stats["num_free_blocks"] == stats["num_total_blocks"]
        for o in finals:  # the stream of each request adds up to its final output
            parts = [s for s in streamed if s.request_id == o.request_id]
            assert [t for s in parts for t in s.new_token_ids] == o.token_ids
            assert "".join(s.new_text for s in parts) == o.text
        results[mode] = (finals, stats)
    return results


@pytest.fixture
def tiny_engine(tiny_config):
    def make(**config):
        model = random_model(tiny_config(eos_token_id=3), torch.float32, "cpu")
        return LLMEngine(model, None, EngineConfig(**{"compile": False, "num_kv_blocks": 32, "block_size": 4,
                                                      **config}))

    return make


def test_async_equals_sync_greedy_and_seeded_with_stops_and_lengths(tiny_engine):
    prompts = [[5, 6, 7], list(range(10, 31)), [9], [1, 2] * 5, [40, 41, 42, 43], [7] * 6]
    probe = tiny_engine()
    (free,), _ = drain(probe, [prompts[0]], [SamplingParams(max_tokens=12, **GREEDY)])
    params = [
        SamplingParams(max_tokens=12, stop_token_ids=[free.token_ids[5]], **GREEDY),  # stops mid-way
        SamplingParams(max_tokens=9, **GREEDY),
        SamplingParams(max_tokens=1, **GREEDY),
        SamplingParams(temperature=0.9, top_p=0.8, seed=11, max_tokens=10, ignore_eos=True),
        SamplingParams(temperature=1.2, top_k=20, seed=5, max_tokens=1),
        SamplingParams(max_tokens=15, temperature=0.0),  # may stop at EOS (id 3)
    ]
    results = both(tiny_engine, prompts, params, max_num_batched_tokens=16)
    sync, async_ = results[False][0], results[True][0]
    assert [o.token_ids for o in async_] == [o.token_ids for o in sync]
    assert [o.finish_reason for o in async_] == [o.finish_reason for o in sync]
    assert sync[0].finish_reason == "stop" and sync[0].token_ids[-1] == free.token_ids[5]
    for o, p in zip(async_, params, strict=True):
        if o.finish_reason == "length":
            assert len(o.token_ids) == p.max_tokens
    assert results[True][1]["num_generated_tokens"] == sum(len(o.token_ids) for o in sync)


def test_async_runs_one_step_ahead_and_drains(tiny_engine):
    """Step 1 launches the prefill but hands out nothing; each later step hands out the previous step's tokens, and
    the engine reports unfinished work until the last of them is out. Decode rows really take the in-flight token."""
    engine = tiny_engine(async_scheduling=True)
    inflight_rows = []
    execute = engine.runner.execute

    def spy(batch, previous=None):
        inflight_rows.append(sum(1 for s in batch.seqs if s.num_inflight))
        return execute(batch, previous)

    engine.runner.execute = spy
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=4, **GREEDY))
    assert engine.step() == [] and engine.has_unfinished_requests()
    counts = []
    while engine.has_unfinished_requests():
        counts.append([len(o.token_ids) for o in engine.step()])
    assert counts == [[1], [2], [3], [4]]
    assert inflight_rows == [0, 1, 1, 1]  # the 4th token's step never ran: it is the last, nothing to make after it
    assert engine.stats()["num_steps"] == 4


def test_async_equals_sync_under_preemption(tiny_engine):
    prompts = [[1, 2, 3, 4, 5], [6] * 9, [7, 8], list(range(30, 43)), [9, 10, 11]]
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in (14, 6, 11, 9, 13)]
    results = both(tiny_engine, prompts, params, num_kv_blocks=10, max_num_batched_tokens=12)
    assert [o.token_ids for o in results[True][0]] == [o.token_ids for o in results[False][0]]
    assert results[True][1]["num_preemptions"] > 0
    assert all(len(o.token_ids) == p.max_tokens for o, p in zip(results[True][0], params, strict=True))


def test_abort_of_a_request_with_a_token_in_flight(tiny_engine):
    alone = tiny_engine(async_scheduling=False)
    (b_alone,), _ = drain(alone, [[4, 5, 6]], [SamplingParams(max_tokens=8, **GREEDY)])
    engine = tiny_engine(async_scheduling=True)
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=50, **GREEDY))
    engine.add_request("b", [4, 5, 6], SamplingParams(max_tokens=8, **GREEDY))
    engine.step()
    delivered = {o.request_id: o for o in engine.step()}
    assert len(delivered["a"].token_ids) == 1 and engine._seqs["a"].num_inflight == 1
    engine.abort_request("a")
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    a_outs = [o for o in outs if o.request_id == "a"]
    assert len(a_outs) == 1 and a_outs[0].finish_reason == "abort"
    assert a_outs[0].token_ids == delivered["a"].token_ids  # the token in flight was dropped
    assert next(o for o in outs if o.request_id == "b" and o.finished).token_ids == b_alone.token_ids
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


def test_stop_strings_async_equals_sync(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok(t).input_ids for t in ("The capital of France is", "def fibonacci(n):", "One, two, three,")]
    make = lambda **config: LLMEngine(smollm2.model, tok, EngineConfig(compile=False, num_kv_blocks=16, **config))
    (sync,), _ = drain(make(), [prompts[0]], [SamplingParams(max_tokens=10, **GREEDY)])
    stop = sync.text.split()[1]  # a word the greedy continuation reaches
    params = [SamplingParams(max_tokens=10, stop=[stop], **GREEDY), SamplingParams(max_tokens=6, **GREEDY),
              SamplingParams(max_tokens=8, stop=[" four", "\n"], temperature=0.0)]
    results = both(make, prompts, params)
    s, a = results[False][0], results[True][0]
    assert [(o.token_ids, o.text, o.finish_reason) for o in a] == [(o.token_ids, o.text, o.finish_reason) for o in s]
    assert s[0].finish_reason == "stop" and stop not in s[0].text


def test_async_scheduling_option():
    with pytest.raises(ValueError, match="async_scheduling"):
        EngineConfig(async_scheduling="yes").validate()


def test_async_scheduling_defaults_off_on_cpu(tiny_engine):
    assert tiny_engine().async_scheduling is False
    assert tiny_engine().stats()["async_scheduling"] is False
