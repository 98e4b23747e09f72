import json
import re
import shutil
import subprocess
import time

import pytest

from nanoflow_compiler.bench.args import BenchOptions
from nanoflow_compiler.bench.report import VLLM_KEYS
from nanoflow_compiler.cli import main

VLLM_LINE = re.compile(r"^Throughput: \d+\.\d\d requests/s, \d+\.\d\d total tokens/s, \d+\.\d\d output tokens/s$",
                       re.MULTILINE)


def _check(stdout: str, result: dict, prompts: int, input_len: int, output_len: int) -> None:
    assert VLLM_LINE.search(stdout)
    assert f"Total num prompt tokens:  {prompts * input_len}\n" in stdout
    assert f"Total num output tokens:  {prompts * output_len}\n" in stdout
    assert "Fraction of optimal: " in stdout
    assert tuple(result)[:5] == VLLM_KEYS
    assert result["num_requests"] == prompts
    assert result["total_num_tokens"] == prompts * (input_len + output_len)
    assert result["total_num_prompt_tokens"] == prompts * input_len
    assert result["total_num_output_tokens"] == prompts * output_len
    assert result["tokens_per_second"] == pytest.approx(result["total_num_tokens"] / result["elapsed_time"])
    assert result["requests_per_second"] == pytest.approx(prompts / result["elapsed_time"])


def test_cli_prints_vllms_line_and_writes_vllms_keys_plus_ours(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["bench", "throughput", "--model", tiny_model_dir, "--num-prompts", "8", "--input-len", "32",
               "--output-len", "16", "--output-json", str(out), "--tflops", "2", "--bandwidth", "0.1"])
    assert rc == 0
    result = json.loads(out.read_text())
    _check(capsys.readouterr().out, result, 8, 32, 16)
    for key in ("device", "versions", "git", "command", "options", "model", "workload", "optimal", "telemetry",
                "peak_memory", "kv_cache", "timing", "compiled_with", "warnings"):
        assert key in result, key
    assert result["versions"]["torch"] and "triton" in result["versions"]
    assert result["workload"]["total_prompt_tokens"] == 256 and result["workload"]["seed"] == 0
    o = result["optimal"]
    assert o["peaks"]["source"] == "given" and o["peaks"]["tflops"] == 2
    assert o["fraction_of_optimal"] == pytest.approx(result["tokens_per_second"] / o["optimal_tokens_per_second"])
    assert 0 < o["fraction_of_roofline_overlapped"] <= o["fraction_of_roofline_sequential"]
    assert result["kv_cache"]["capacity_tokens"] > 0 and result["kv_cache"]["bytes"] > 0
    assert result["telemetry"]["available"] is False  # CPU: no NVML, recorded as such
    assert result["timing"]["warmup_prompts"] == 8 and "compile_seconds" in result["timing"]
    assert result["options"]["ignore_eos"] is True and result["options"]["device"] == "cpu"


def test_trace_shaped_workload_counts_every_token(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "throughput", "--model", tiny_model_dir, "--dataset", "lmsys-like", "--num-prompts", "3",
                 "--output-len", "3", "--no-compile", "--num-warmup-prompts", "0", "--tflops", "1",
                 "--bandwidth", "1", "--output-json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["total_num_output_tokens"] == 9
    assert result["total_num_prompt_tokens"] == result["workload"]["total_prompt_tokens"]
    assert result["options"]["compile"] is False and result["compiled_with"] == "eager"


@pytest.mark.parametrize("argv, message", [
    (["--input-len", "0"], "--input-len must be at least 1"),
    (["--input-len", "600", "--output-len", "16"], "exceed the model's context"),
])
def test_bad_workloads_end_in_one_line(tiny_model_dir, capsys, argv, message):
    rc = main(["bench", "throughput", "--model", tiny_model_dir, "--num-prompts", "2", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_bad_compile_options_are_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "throughput", "--compile-options", "[1, 2]"])
    assert e.value.code == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_options_resolve_device_dtype_and_warmup():
    import torch

    o = BenchOptions(device="cpu", num_prompts=100)
    assert o.resolved_dtype() == torch.float32 and o.warmup_prompts() == 64
    assert BenchOptions(num_prompts=5).warmup_prompts() == 5
    assert BenchOptions(num_prompts=3, num_warmup_prompts=10).warmup_prompts() == 3
    assert BenchOptions(device="cpu", dtype="bfloat16").resolved_dtype() == torch.bfloat16


@pytest.mark.slow
def test_acceptance_smollm2_on_cpu(tmp_path):
    """The issue's CPU acceptance command, through the installed `nanoflow` entry point."""
    exe = shutil.which("nanoflow")
    if exe is None:
        pytest.skip("the nanoflow entry point is not installed")
    out = tmp_path / "r.json"
    start = time.perf_counter()
    proc = subprocess.run([exe, "bench", "throughput", "--model", "smollm2-135m", "--num-prompts", "8",
                           "--input-len", "32", "--output-len", "16", "--output-json", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check(proc.stdout, json.loads(out.read_text()), 8, 32, 16)
    print(f"acceptance command took {wall:.1f} s")


def test_async_scheduling_flag_reaches_the_engine(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["bench", "throughput", "--model", tiny_model_dir, "--num-prompts", "4", "--input-len", "8",
               "--output-len", "5", "--async-scheduling", "--output-json", str(out), "--tflops", "2",
               "--bandwidth", "0.1", "--num-warmup-prompts", "0"])
    assert rc == 0
    result = json.loads(out.read_text())
    _check(capsys.readouterr().out, result, 4, 8, 5)
    assert result["engine_stats"]["async_scheduling"] is True
    assert result["options"]["engine_config"]["async_scheduling"] is True
