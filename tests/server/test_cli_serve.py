"""`nanoflow serve` as a user runs it: a subprocess on 127.0.0.1, port 0, stopped by SIGTERM while streaming."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx

from nanoflow_compiler.cli import build_parser

CLI = [sys.executable, "-c", "import sys; from nanoflow_compiler.cli import main; sys.exit(main())", "serve"]


def test_help_lists_the_server_options():
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for option in ("--model", "--host", "--port", "--api-key", "--max-queued", "--max-tokens-limit",
                   "--served-model-name", "--drain-timeout"):
        assert option in help_text


def test_a_taken_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*CLI, "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_subprocess_answers_then_drains_on_sigterm():
    """A random-weight preset (no tokenizer: token-id prompts) keeps the start fast."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*CLI, "--model", "smollm2-135m", "--no-compile", "--port", "0", "--max-model-len", "128",
                             "--num-kv-blocks", "64", "--api-key", "k", "--served-model-name", "tiny",
                             "--log-level", "warning"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = proc.stderr.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", banner).group(1)
        headers = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
            r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
            body = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 40, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200  # admitted: the engine is running it now
                proc.send_signal(signal.SIGTERM)  # a running stream is finished, not cut
                events = [line for line in r.iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"
        assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 40
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
