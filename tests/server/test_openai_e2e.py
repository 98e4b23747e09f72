"""End to end on CPU: the official `openai` client against SmolLM2 served on 127.0.0.1 (a free port), checked
token for token against `LLM.generate` / `LLM.chat` with the same engine settings."""

from __future__ import annotations

import asyncio
import copy
import re
import time

import httpx
import openai
import pytest

from nanoflow_compiler import LLM, SamplingParams
from nanoflow_compiler.models import LoadedModel
from nanoflow_compiler.runtime.engine import EngineConfig, LLMEngine
from nanoflow_compiler.server import create_app
from nanoflow_compiler.server.launch import ServerThread

ENGINE = dict(compile=False, max_model_len=512)  # eager keeps the suite fast; the context keeps the cache small
KEY = "test-key"
NAME = "smollm2"
MAX_TOKENS_LIMIT = 256
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def reference(smollm2):
    """`LLM` on the session's model (its KV cache lives in that model's buffers)."""
    return LLM(smollm2, **ENGINE)


@pytest.fixture(scope="module")
def server(smollm2):
    """SmolLM2 behind uvicorn, with an API key and a max_tokens limit; its own copy of the model, since an engine
    keeps its KV cache in its model's buffers."""
    loaded = LoadedModel(copy.deepcopy(smollm2.model), smollm2.tokenizer, smollm2.name, smollm2.source)
    engine = LLMEngine(loaded.model, loaded.tokenizer, EngineConfig(**ENGINE))
    app = create_app(engine, loaded.tokenizer, model_name=NAME, api_key=KEY, max_queued=128,
                     max_tokens_limit=MAX_TOKENS_LIMIT, drain_timeout_s=5.0)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


def _metric(server, name: str) -> float:
    """One sample from /metrics; 0 for a labelled counter that has not been incremented yet."""
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match or "{" in name, f"{name} missing from /metrics"
    return float(match.group(1)) if match else 0.0


def test_completion_matches_llm_generate(client, reference):
    prompt = "The three primary colours are"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    ref = reference.generate(prompt, _greedy(12), use_tqdm=False)[0]
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.completion_tokens == len(ref.token_ids) and r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert [m.id for m in client.models.list().data] == [NAME]


def test_chat_matches_llm_chat(client, reference):
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0)
    ref = reference.chat(CHAT, _greedy(12), use_tqdm=False)[0]
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text and ref.text


def test_streaming_chat_matches_llm_chat(client, reference):
    stream = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    ref = reference.chat(CHAT, _greedy(12), use_tqdm=False)[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason == ref.finish_reason


@pytest.mark.slow
def test_64_concurrent_streams_each_equal_their_one_at_a_time_answer(server, reference):
    prompts = [f"Question {i}: what is {i} plus {i % 7}? Answer:" for i in range(64)]
    max_tokens = [8 + i % 3 for i in range(64)]  # different lengths: requests leave the batch at different steps
    expected = [reference.generate(p, _greedy(n), use_tqdm=False)[0].text for p, n in zip(prompts, max_tokens)]

    async def one(aclient, prompt: str, n: int) -> str:
        stream = await aclient.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0,
                                                  stream=True)
        return "".join([chunk.choices[0].text async for chunk in stream])

    async def all_of_them() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        async with aclient:
            return await asyncio.wait_for(
                asyncio.gather(*(one(aclient, p, n) for p, n in zip(prompts, max_tokens))), timeout=120)

    finished_before = _metric(server, 'nanoflow_requests_total{endpoint="/v1/completions",status="200"}')
    start = time.monotonic()
    got = asyncio.run(all_of_them())
    elapsed = time.monotonic() - start
    mismatches = [(i, got[i], expected[i]) for i in range(64) if got[i] != expected[i]]
    assert not mismatches, f"{len(mismatches)} of 64 differ, e.g. {mismatches[:3]}"
    assert elapsed < 120
    assert _metric(server, 'nanoflow_requests_total{endpoint="/v1/completions",status="200"}') == finished_before + 64
    assert _metric(server, "nanoflow_num_requests_running") == 0
    assert _metric(server, "nanoflow_kv_free_blocks") == _metric(server, "nanoflow_kv_total_blocks")


GOOD = {"model": NAME, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
BAD = [
    ("malformed JSON", b'{"model": "smollm2", "prompt": "Hi",', 400, "malformed JSON"),
    ("missing field", {"prompt": "Hi"}, 400, "'model' is a required field"),
    ("wrong type", {**GOOD, "max_tokens": "two"}, 400, "'max_tokens': Input should be a valid integer"),
    ("unknown model", {**GOOD, "model": "gpt-4o"}, 404, "The model 'gpt-4o' does not exist"),
    ("max_tokens too small", {**GOOD, "max_tokens": 0}, 400, "'max_tokens' must be at least 1"),
    ("max_tokens too large", {**GOOD, "max_tokens": MAX_TOKENS_LIMIT + 1}, 400, f"at most {MAX_TOKENS_LIMIT}"),
    ("bad temperature", {**GOOD, "temperature": -1}, 400, "'temperature' must be between 0 and 2"),
    ("bad top_p", {**GOOD, "top_p": 1.5}, 400, "top_p must be in (0, 1]"),
    ("prompt too long", {**GOOD, "prompt": "hello " * 600}, 400, "maximum context length is 512 tokens"),
    ("prompt + max_tokens too long", {**GOOD, "prompt": "hello " * 500, "max_tokens": 100}, 400,
     "for the completion"),
]


@pytest.mark.parametrize("case,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(server, client, case, body, status, message):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.url}/v1/completions", headers=headers, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert client.completions.create(**GOOD).choices[0].finish_reason == "length"


@pytest.mark.parametrize("key,error", [(None, "missing API key"), ("wrong-key", "incorrect API key")])
def test_wrong_or_missing_api_key_is_401(server, client, key, error):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{server.url}/v1/completions", json=GOOD, headers=headers)
    assert r.status_code == 401 and error in r.json()["error"]["message"]
    if key:  # the client itself refuses to send no key at all
        bad_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            bad_client.completions.create(**GOOD)
    assert client.completions.create(**GOOD).choices[0].text


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        client.chat.completions.create(model=NAME, messages=CHAT, max_completion_tokens=MAX_TOKENS_LIMIT + 1)


def test_killing_a_client_mid_stream_frees_its_blocks(server):
    total = _metric(server, "nanoflow_kv_total_blocks")
    aborted_before = _metric(server, 'nanoflow_request_finished_total{finish_reason="abort"}')
    generated_before = _metric(server, "nanoflow_generation_tokens_total")
    body = {"model": NAME, "prompt": "Tell me a very long story.", "max_tokens": MAX_TOKENS_LIMIT,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            for _ in range(3):
                assert next(lines).startswith("data: ")
                next(lines)
            assert _metric(server, "nanoflow_num_requests_running") == 1
            assert _metric(server, "nanoflow_kv_free_blocks") < total
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _metric(server, "nanoflow_kv_free_blocks") < total:
        time.sleep(0.05)
    assert _metric(server, "nanoflow_kv_free_blocks") == total
    assert _metric(server, "nanoflow_num_requests_running") == 0
    assert _metric(server, 'nanoflow_request_finished_total{finish_reason="abort"}') == aborted_before + 1
    assert _metric(server, "nanoflow_generation_tokens_total") - generated_before < MAX_TOKENS_LIMIT
