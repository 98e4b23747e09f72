import json
import math

import pytest

from nanoflow_compiler.bench.report import (
    VLLM_KEYS, environment, vllm_throughput_lines, vllm_throughput_result, write_json,
)


def test_vllm_lines_are_vllms():
    r = vllm_throughput_result(elapsed=2.0, num_requests=8, prompt_tokens=256, output_tokens=128)
    assert r["tokens_per_second"] == 192.0 and r["requests_per_second"] == 4.0
    assert vllm_throughput_lines(r).splitlines() == [
        "Throughput: 4.00 requests/s, 192.00 total tokens/s, 64.00 output tokens/s",
        "Total num prompt tokens:  256",
        "Total num output tokens:  128",
    ]
    with pytest.raises(ValueError, match="positive"):
        vllm_throughput_result(0.0, 1, 1, 1)


def test_json_puts_vllm_keys_first_and_refuses_nan(tmp_path):
    r = {"zeta": 1} | vllm_throughput_result(1.0, 2, 3, 4)
    path = tmp_path / "sub" / "r.json"
    write_json(path, r)
    assert tuple(json.loads(path.read_text()))[:5] == VLLM_KEYS
    with pytest.raises(ValueError):
        write_json(path, {"x": math.nan})


def test_environment_names_device_versions_and_commit():
    env = environment("cpu")
    assert env["device"]["type"] == "cpu"
    assert env["versions"]["torch"] and "triton" in env["versions"]
    assert set(env["git"]) == {"commit", "dirty"}
    assert env["command"]
