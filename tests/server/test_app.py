"""Routes over a fake engine: response and SSE shapes, batch prompts, disconnects, overload, graceful shutdown."""

from __future__ import annotations

import json
import threading
import time

import httpx
from server_fakes import FakeEngine

GOOD = {"model": "fake", "prompt": "hello", "max_tokens": 3}


def _events(response: httpx.Response) -> list:
    """The SSE `data:` payloads of a streamed response, JSON-decoded except the final `[DONE]`."""
    out = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_models_health_and_batch_completion(fake_server):
    s = fake_server()
    with httpx.Client(base_url=s.url) as c:
        assert c.get("/health").json() == {"status": "ok"}
        models = c.get("/v1/models").json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["fake"]
        r = c.post("/v1/completions", json={**GOOD, "prompt": ["ab", "abcd"]}).json()
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert [(ch["index"], ch["text"], ch["finish_reason"]) for ch in r["choices"]] == [
        (0, FakeEngine.expected(2, 3), "length"), (1, FakeEngine.expected(4, 3), "length")]
    assert r["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}


def test_streamed_chat_follows_openai_chunk_format(fake_server):
    s = fake_server()
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=s.url) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {e["object"] for e in chunks} == {"chat.completion.chunk"} and len({e["id"] for e in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks[1:-2])
    prompt_len = len("<user>hi<assistant>")
    assert content == FakeEngine.expected(prompt_len, 4)
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_streamed_completion_ends_with_done(fake_server):
    s = fake_server()
    with httpx.Client(base_url=s.url) as c, c.stream("POST", "/v1/completions", json={**GOOD, "stream": True}) as r:
        events = _events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == FakeEngine.expected(5, 3)
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, None, "length"]


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(fake_server):
    engine = FakeEngine(max_model_len=100_000, step_delay_s=0.01)
    s = fake_server(engine)
    with httpx.Client(base_url=s.url) as c:
        with c.stream("POST", "/v1/completions", json={**GOOD, "max_tokens": 5000, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        assert _wait_for(lambda: engine.aborted), "the server never aborted the abandoned stream"
        assert _wait_for(lambda: "nanoflow_kv_free_blocks 256.0" in c.get("/metrics").text)
        metrics = c.get("/metrics").text
    assert 'nanoflow_request_finished_total{finish_reason="abort"} 1.0' in metrics


def test_client_timeout_on_a_plain_request_aborts_it(fake_server):
    engine = FakeEngine(max_model_len=100_000, step_delay_s=0.01)
    s = fake_server(engine)
    try:
        httpx.post(f"{s.url}/v1/completions", json={**GOOD, "max_tokens": 5000}, timeout=0.2)
    except httpx.TimeoutException:
        pass
    assert _wait_for(lambda: engine.aborted), "the server never noticed the client hung up"
    assert httpx.post(f"{s.url}/v1/completions", json=GOOD).status_code == 200


def test_full_queue_answers_429_with_retry_after(fake_server):
    engine = FakeEngine()
    s = fake_server(engine, max_queued=2)
    engine.gate.clear()  # the engine thread stalls in its next step, so nobody gets a first token
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(httpx.post(f"{s.url}/v1/completions", json=GOOD,
                                                                        timeout=30).status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
    assert _wait_for(lambda: "nanoflow_queue_depth 2.0" in httpx.get(f"{s.url}/metrics").text)
    r = httpx.post(f"{s.url}/v1/completions", json=GOOD)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and "limit 2" in r.json()["error"]["message"]
    engine.gate.set()
    for t in threads:
        t.join(30)
    assert results == [200, 200]
    assert httpx.post(f"{s.url}/v1/completions", json=GOOD).status_code == 200


def test_draining_server_refuses_new_work_with_503_but_finishes_running_streams(fake_server):
    s = fake_server(FakeEngine(step_delay_s=0.01), drain_timeout_s=30.0)
    with httpx.Client(base_url=s.url) as c:
        with c.stream("POST", "/v1/completions", json={**GOOD, "max_tokens": 20, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(lines)
            s.app.state.serving.engine.begin_drain(30.0)
            refused = httpx.post(f"{s.url}/v1/completions", json=GOOD)
            health = httpx.get(f"{s.url}/health")
            rest = [line for line in lines if line]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
    assert health.status_code == 503 and health.json()["status"] == "draining"
    events = [json.loads(x[6:]) for x in [first, *rest[:-1]]]
    assert rest[-1] == "data: [DONE]" and events[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events) == FakeEngine.expected(5, 20)


def test_stop_past_the_drain_timeout_ends_streams_cleanly(fake_server):
    s = fake_server(FakeEngine(max_model_len=100_000, step_delay_s=0.01), drain_timeout_s=0.3)
    with httpx.Client(base_url=s.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={**GOOD, "max_tokens": 10_000, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)
            stopper = threading.Thread(target=s.stop)
            stopper.start()
            rest = [line for line in lines if line]
    stopper.join(30)
    assert not stopper.is_alive()
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "abort"
