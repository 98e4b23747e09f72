"""Every bad request gets OpenAI's error shape, the right status and a message naming the problem, and the server
keeps serving afterwards (fake engine; the same checks run against SmolLM2 in test_openai_e2e.py)."""

from __future__ import annotations

import httpx
import pytest
from server_fakes import FakeEngine, FakeTokenizer

from nanoflow_compiler.server import create_app
from nanoflow_compiler.server.launch import ServerThread

GOOD = {"model": "fake", "prompt": "hello", "max_tokens": 3}
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}

# (path, raw body or JSON, status, code, words the message must contain)
BAD_REQUESTS = [
    ("/v1/completions", b'{"model": "fake", "prompt": ', 400, "invalid_json", ["malformed JSON"]),
    ("/v1/completions", b"[1, 2]", 400, "invalid_body", ["JSON object"]),
    ("/v1/completions", {"prompt": "x"}, 400, "missing_field", ["'model'", "required"]),
    ("/v1/chat/completions", {"model": "fake"}, 400, "missing_field", ["'messages'", "required"]),
    ("/v1/completions", {**GOOD, "max_tokens": "ten"}, 400, "invalid_type", ["'max_tokens'", "integer"]),
    ("/v1/completions", {**GOOD, "temperature": "hot"}, 400, "invalid_type", ["'temperature'", "number"]),
    ("/v1/completions", {**GOOD, "stream": "yes"}, 400, "invalid_type", ["'stream'", "boolean"]),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_type",
     ["'messages[0].role'"]),
    ("/v1/completions", {**GOOD, "model": "gpt-4"}, 404, "model_not_found", ["gpt-4", "does not exist"]),
    ("/v1/completions", {**GOOD, "max_tokens": 0}, 400, "invalid_value", ["'max_tokens'", "at least 1"]),
    ("/v1/completions", {**GOOD, "max_tokens": 33}, 400, "invalid_value", ["'max_tokens'", "at most 32"]),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 33}, 400, "invalid_value",
     ["'max_completion_tokens'", "at most 32"]),
    ("/v1/completions", {**GOOD, "temperature": -0.5}, 400, "invalid_value", ["'temperature'"]),
    ("/v1/completions", {**GOOD, "temperature": 2.5}, 400, "invalid_value", ["'temperature'", "between 0 and 2"]),
    ("/v1/completions", {**GOOD, "top_p": 0}, 400, "invalid_value", ["top_p", "(0, 1]"]),
    ("/v1/completions", {**GOOD, "top_k": 0}, 400, "invalid_value", ["top_k"]),
    ("/v1/completions", {**GOOD, "stop": [""]}, 400, "invalid_value", ["stop"]),
    ("/v1/completions", {**GOOD, "prompt": "x" * 70}, 400, "context_length_exceeded", ["64 tokens", "70 tokens"]),
    ("/v1/completions", {**GOOD, "prompt": "x" * 60, "max_tokens": 10}, 400, "context_length_exceeded",
     ["64 tokens", "60 in the prompt", "10 for the completion"]),
    ("/v1/completions", {**GOOD, "prompt": [1, 2, 999]}, 400, None, ["token id 999", "vocabulary"]),
    ("/v1/completions", {**GOOD, "prompt": ""}, 400, None, ["empty"]),
    ("/v1/completions", {**GOOD, "n": 2}, 400, None, ["'n'"]),
    ("/v1/completions", {**GOOD, "logprobs": 3}, 400, None, ["'logprobs'", "not supported"]),
    ("/v1/completions", {**GOOD, "stream_options": {"include_usage": True}}, 400, None, ["'stream'"]),
]


@pytest.fixture(scope="module")
def server():
    app = create_app(FakeEngine(), FakeTokenizer(), model_name="fake", max_tokens_limit=32)
    with ServerThread(app) as s:
        yield s


@pytest.mark.parametrize("path,body,status,code,words", BAD_REQUESTS,
                         ids=[f"{i}-{c or s}" for i, (_, _, s, c, _) in enumerate(BAD_REQUESTS)])
def test_bad_request_gets_openai_error_and_server_keeps_serving(server, path, body, status, code, words):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        if isinstance(body, bytes):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = c.post(path, json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        if code is not None:
            assert err["code"] == code
        for w in words:
            assert w in err["message"], err["message"]
        ok = c.post("/v1/completions", json=GOOD)
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "fgh"


def test_unknown_route_and_method_use_the_same_shape(server):
    with httpx.Client(base_url=server.url) as c:
        r = c.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"
        r = c.get("/v1/completions")
        assert r.status_code == 405 and "error" in r.json()


def test_api_key_is_required_when_set(fake_server):
    s = fake_server(api_key="s3cret")
    with httpx.Client(base_url=s.url) as c:
        missing = c.post("/v1/completions", json=GOOD)
        wrong = c.post("/v1/completions", json=GOOD, headers={"Authorization": "Bearer nope"})
        models = c.get("/v1/models")
        right = c.post("/v1/completions", json=GOOD, headers={"Authorization": "Bearer s3cret"})
        health = c.get("/health")
    for r in (missing, wrong, models):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "missing API key" in missing.json()["error"]["message"]
    assert "incorrect API key" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and health.status_code == 200  # health and metrics stay open to probes
