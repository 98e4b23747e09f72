import json

import pytest

from nanoflow_compiler.bench.args import BenchOptions
from nanoflow_compiler.bench.datasets import make_workload

TRTLLM_OVERVIEW = """
===========================================================
= PERFORMANCE OVERVIEW
===========================================================
Request Throughput (req/sec):                     43.2089
Total Output Throughput (tokens/sec):             5530.7382
Per GPU Output Throughput (tokens/sec/gpu):       5530.7382
Total Token Throughput (tokens/sec):              94022.5497
Total Latency (ms):                               115716.9214
"""


@pytest.mark.parametrize("name, system", [
    ("vllm_runner", "vllm"), ("sglang_runner", "sglang"), ("trtllm_runner", "tensorrt-llm"),
    ("torch_tensorrt_runner", "our engine + torch_tensorrt"),
])
def test_missing_peers_skip_cleanly(script, tmp_path, capsys, name, system):
    module = script(f"peers/{name}.py")
    parser = module.build_parser() if hasattr(module, "build_parser") else module.parser(name, "")
    out = tmp_path / "peer.json"
    args = parser.parse_args(["--model", "llama-3-8b", "--input-len", "8", "--output-len", "4",
                              "--output-json", str(out)])
    if _installed(name):
        pytest.skip(f"{system} is installed here")
    assert module.run(args) == 0
    assert "skipped" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["skipped"] is True and result["system"] == system and "not installed" in result["reason"]
    assert result["workload_args"]["input_len"] == 8 and "versions" in result


def _installed(name: str) -> bool:
    import importlib.util
    import shutil

    return {"vllm_runner": shutil.which("vllm") is not None,
            "sglang_runner": importlib.util.find_spec("sglang") is not None,
            "trtllm_runner": shutil.which("trtllm-bench") is not None,
            "torch_tensorrt_runner": importlib.util.find_spec("torch_tensorrt") is not None}[name]


def test_vllm_and_sglang_commands_ask_for_fixed_lengths(script):
    vllm = script("peers/vllm_runner.py")
    sglang = script("peers/sglang_runner.py")
    argv = ["--peer-model", "meta-llama/Meta-Llama-3-8B", "--input-len", "1024", "--output-len", "512",
            "--num-prompts", "100", "--dtype", "bfloat16", "--peer-args", "--load-format dummy"]
    v = vllm.command(vllm.parser("v", "").parse_args(argv), "/tmp/x.json")
    assert v[:3] == ["vllm", "bench", "throughput"]
    assert _after(v, "--random-range-ratio") == "0" and _after(v, "--input-len") == "1024"
    assert _after(v, "--output-len") == "512" and _after(v, "--dtype") == "bfloat16"
    assert v[-2:] == ["--load-format", "dummy"]
    s = sglang.command(sglang.parser("s", "").parse_args(argv), "/tmp/x.jsonl")
    assert s[1:3] == ["-m", "sglang.bench_offline_throughput"]
    assert _after(s, "--random-range-ratio") == "1" and _after(s, "--random-input-len") == "1024"
    assert _after(s, "--model-path") == "meta-llama/Meta-Llama-3-8B"
    with pytest.raises(ValueError, match="per-request lengths"):
        vllm.command(vllm.parser("v", "").parse_args(["--peer-model", "m", "--dataset", "sharegpt-like"]), "x")


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_trtllm_reads_our_exact_prompts_and_its_overview(script, tmp_path):
    trt = script("peers/trtllm_runner.py")
    args = trt.parser("t", "").parse_args(["--model", "llama-3-8b", "--dataset", "splitwise-like", "--num-prompts",
                                           "5", "--peer-model", "meta-llama/Meta-Llama-3-8B"])
    w = trt.write_dataset(args, tmp_path / "d.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    ours = make_workload("splitwise-like", 5, 128256, seed=0, max_model_len=8192)
    assert [x["input_ids"] for x in lines] == [r.prompt_token_ids for r in ours.requests] == \
        [r.prompt_token_ids for r in w.requests]
    assert [x["output_tokens"] for x in lines] == [r.output_len for r in ours.requests]
    overview = trt.parse_overview(TRTLLM_OVERVIEW)
    assert overview == {"total_latency_ms": 115716.9214, "request_throughput": 43.2089,
                        "output_throughput": 5530.7382, "total_token_throughput": 94022.5497}
    with pytest.raises(ValueError, match="Total Latency"):
        trt.parse_overview("nothing here")
    cmd = trt.command(args, "d.jsonl", "r.json")
    assert cmd[cmd.index("throughput") + 1:][:4] == ["--dataset", "d.jsonl", "--backend", "pytorch"]


def test_hf_transformers_runs_the_same_workload(script, tiny_model_dir, tmp_path, capsys):
    hf = script("peers/hf_transformers.py")
    out = tmp_path / "hf.json"
    args = hf.build_parser().parse_args(["--model", tiny_model_dir, "--num-prompts", "5", "--input-len", "8",
                                         "--output-len", "3", "--batch-size", "2", "--no-compile",
                                         "--output-json", str(out)])
    assert hf.run(args) == 0
    assert "Total num output tokens:  15" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["system"] == "hf_transformers" and r["total_num_tokens"] == 55
    assert r["generated_tokens_including_batch_padding"] == 15
    assert r["options"]["static_cache"] is True and r["options"]["batch_size"] == 2


def test_inductor_peer_selects_the_stock_backend(script):
    from nanoflow_compiler.bench.runner import engine_config

    ind = script("peers/inductor.py")
    assert ind.BACKEND == "inductor"
    config = engine_config(BenchOptions(device="cpu", backend=ind.BACKEND))
    assert config.backend == "inductor" and config.compile is True
