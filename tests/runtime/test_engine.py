"""The engine on the real SmolLM2 (parity with Hugging Face, batching invariance, bad input) and on tiny models."""

import pytest
import torch

from nanoflow_compiler.models import random_model
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.runtime.sampling import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def run(engine, prompts, params):
    """Add every prompt, step to the end; returns the final output of each, in order, and all streamed outputs."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"req-{i}", p, sp)
    final, streamed = {}, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            streamed.append(out)
            if out.finished:
                assert out.request_id not in final, "a request finished twice"
                final[out.request_id] = out
    return [final[f"req-{i}"] for i in range(len(prompts))], streamed


def chat_ids(tokenizer, text):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def hf_greedy(model, prompts, n):
    """Hugging Face's own forward with its KV cache, greedy, EOS ignored (generate() would stop at EOS); the prompts
    go as one left-padded batch with an attention mask and explicit positions."""
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
    tokens = []
    for _ in range(n):
        tokens.append(out.logits[:, -1].argmax(-1))
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(tokens[-1][:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_kw: getattr(out, cache_kw)})
    return torch.stack(tokens, dim=1).tolist()


@pytest.mark.slow
def test_greedy_matches_hugging_face_token_for_token(smollm2):
    from transformers import AutoModelForCausalLM

    from nanoflow_compiler.models.loader import default_gguf_path

    path = default_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = smollm2.tokenizer
    prompts = [
        chat_ids(tok, "What is the capital of France?"),
        chat_ids(tok, "Write a haiku about the sea."),
        chat_ids(tok, "List three prime numbers and explain why they are prime."),
        tok("The history of the Roman Empire").input_ids,
        tok("def fibonacci(n):").input_ids,
        tok("Once upon a time, in a small village by the mountains, there lived an old").input_ids,
    ]
    engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=False))
    ours, _ = run(engine, prompts, SamplingParams(max_tokens=32, **GREEDY))
    with torch.inference_mode():
        theirs = hf_greedy(hf, prompts, 32)
    for prompt, out, expected in zip(prompts, ours, theirs, strict=True):
        assert out.token_ids == expected, tok.decode(prompt)
    assert "Paris" in ours[0].text


@pytest.mark.slow
def test_batch_with_chunked_prefill_and_preemption_matches_each_request_alone(smollm2):
    tok = smollm2.tokenizer
    texts = ["Hi.", "Explain how a rainbow forms, in simple words, for a child who is five years old.",
             "Name a fruit.", "Translate to French: the cat sleeps on the warm windowsill all afternoon long.",
             "What is 2 + 2?"]
    prompts = [chat_ids(tok, t) for t in texts]
    params = SamplingParams(max_tokens=16, **GREEDY)
    alone = []
    for p in prompts:
        engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=False, num_kv_blocks=16, block_size=8))
        alone.append(run(engine, [p], params)[0][0].token_ids)
    engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=False, max_num_batched_tokens=16,
                                                        num_kv_blocks=16, block_size=8))
    together, streamed = run(engine, prompts, params)
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["last_num_batched_tokens"] <= 16
    assert [o.token_ids for o in together] == alone
    for o in together:  # the stream of each request adds up to its final output
        parts = [s for s in streamed if s.request_id == o.request_id]
        assert sum((s.new_token_ids for s in parts), []) == o.token_ids
        assert "".join(s.new_text for s in parts) == o.text
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_bad_requests_are_refused_and_the_engine_keeps_serving(smollm2):
    tok = smollm2.tokenizer
    engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=False, num_kv_blocks=8, block_size=16))
    good = chat_ids(tok, "What is the capital of France?")
    bad = [
        ([], SamplingParams(), "empty"),
        ([1] * 200, SamplingParams(), "context holds 128"),
        ([10**9], SamplingParams(), "outside the vocabulary"),
        (good, SamplingParams(temperature=-1.0), "temperature"),
        (good, SamplingParams(top_p=0.0), "top_p"),
        (good, SamplingParams(top_p=1.2), "top_p"),
        (good, SamplingParams(top_k=0), "top_k"),
        (good, SamplingParams(top_k=-5), "top_k"),
        (good, SamplingParams(max_tokens=0), "max_tokens"),
    ]
    for i, (prompt, params, message) in enumerate(bad):
        with pytest.raises(ValueError, match=message):
            engine.add_request(f"bad-{i}", prompt, params)
        assert not engine.has_unfinished_requests()
    engine.add_request("dup", good, SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", good, SamplingParams())
    engine.abort_request("dup")
    (out,), _ = run(engine, [good], SamplingParams(max_tokens=8, temperature=0.0))
    assert "Paris" in out.text and out.finish_reason in ("stop", "length")


def test_stop_string_truncates_the_text(smollm2):
    tok = smollm2.tokenizer
    engine = LLMEngine(smollm2.model, tok, EngineConfig(compile=False, num_kv_blocks=8))
    prompt = chat_ids(tok, "What is the capital of France?")
    (full,), _ = run(engine, [prompt], SamplingParams(max_tokens=12, temperature=0.0))
    assert "Paris" in full.text and full.finish_reason == "stop"  # EOS
    (cut,), streamed = run(engine, [prompt], SamplingParams(max_tokens=12, temperature=0.0, stop=["Paris"]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index("Paris")]
    assert "".join(o.new_text for o in streamed) == cut.text
    assert engine.stats()["prefix_cache_hit_tokens"] > 0  # the second run reused the first one's prompt blocks


@pytest.fixture
def tiny_engine(tiny_config):
    def make(**config):
        model = random_model(tiny_config(eos_token_id=3), torch.float32, "cpu")
        config = {"compile": False, "num_kv_blocks": 32, "block_size": 4, **config}
        return LLMEngine(model, None, EngineConfig(**config))

    return make


def test_finish_reasons(tiny_engine):
    engine = tiny_engine()
    (free,), _ = run(engine, [[5, 6, 7]], SamplingParams(max_tokens=20, **GREEDY))
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    stop_at = free.token_ids[4]
    (stopped,), _ = run(engine, [[5, 6, 7]], SamplingParams(max_tokens=20, stop_token_ids=[stop_at], **GREEDY))
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[: free.token_ids.index(stop_at) + 1]
    (eos,), _ = run(engine, [[5, 6, 7]], SamplingParams(max_tokens=20, temperature=0.0))
    if 3 in free.token_ids:
        assert eos.finish_reason == "stop" and eos.token_ids[-1] == 3
    else:
        assert eos.token_ids == free.token_ids


def test_eos_stops_unless_ignored(tiny_engine):
    engine = tiny_engine()
    engine.eos_token_ids = {int(run(engine, [[9, 9]], SamplingParams(max_tokens=1, **GREEDY))[0][0].token_ids[0])}
    (out,), _ = run(engine, [[9, 9]], SamplingParams(max_tokens=5, temperature=0.0))
    assert out.finish_reason == "stop" and len(out.token_ids) == 1
    (out,), _ = run(engine, [[9, 9]], SamplingParams(max_tokens=5, **GREEDY))
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_context_length_ends_generation(tiny_engine):
    engine = tiny_engine(max_model_len=12)
    (out,), _ = run(engine, [list(range(10))], SamplingParams(max_tokens=50, **GREEDY))
    assert out.finish_reason == "length" and len(out.token_ids) == 2


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_engine):
    engine = tiny_engine()
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    (alone,), _ = run(engine, [[1, 2, 3]], seeded)
    others = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, ignore_eos=True)
    batched, _ = run(engine, [[4, 5], [1, 2, 3], [6] * 9], [others, seeded, others])
    assert batched[1].token_ids == alone.token_ids
    (other_seed,), _ = run(engine, [[1, 2, 3]], SamplingParams(temperature=1.0, seed=8, max_tokens=12, ignore_eos=True))
    assert other_seed.token_ids != alone.token_ids


def test_abort_returns_a_final_output_and_frees_blocks(tiny_engine):
    engine = tiny_engine()
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=50, **GREEDY))
    engine.add_request("b", [4, 5, 6], SamplingParams(max_tokens=50, **GREEDY))
    engine.step()
    engine.abort_request("a")
    engine.abort_request("no-such-request")
    outs = {o.request_id: o for o in engine.step()}
    assert outs["a"].finished and outs["a"].finish_reason == "abort" and len(outs["a"].token_ids) == 1
    assert not outs["b"].finished
    engine.abort_request("b")
    assert engine.step()[0].finish_reason == "abort"
    assert not engine.has_unfinished_requests()
    assert engine.stats()["num_free_blocks"] == engine.stats()["num_total_blocks"]


def test_stats_report_the_iteration(tiny_engine):
    engine = tiny_engine(max_num_batched_tokens=8)
    run(engine, [list(range(20))], SamplingParams(max_tokens=2, **GREEDY))
    s = engine.stats()
    for key in ("num_waiting", "num_running", "num_free_blocks", "num_total_blocks", "kv_usage", "num_preemptions",
                "last_iteration_seconds", "compile_backend", "compile_fallback"):
        assert key in s
    assert s["num_total_blocks"] == 32 and s["kv_usage"] == 0.0
    assert s["num_steps"] == 4  # 20 prompt tokens in chunks of 8, then one decode
    assert s["num_generated_tokens"] == 2 and s["num_computed_tokens"] == 21
    assert s["last_iteration_seconds"] > 0


def test_compiled_engine_gives_the_eager_tokens(tiny_engine):
    """The default backend (nanoflow, or eager with a recorded fallback while it is missing) changes no token."""
    prompts = [[1, 2, 3], [4] * 20, [7, 8]]
    params = SamplingParams(max_tokens=8, **GREEDY)
    eager, _ = run(tiny_engine(max_num_batched_tokens=16), prompts, params)
    engine = tiny_engine(max_num_batched_tokens=16, compile=True)
    compiled, _ = run(engine, prompts, params)
    assert [o.token_ids for o in compiled] == [o.token_ids for o in eager]
    stats = engine.stats()
    assert (stats["compile_backend"] == "nanoflow") != (stats["compile_fallback"] is not None)
