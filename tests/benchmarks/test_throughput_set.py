"""`benchmarks/throughput_set.py`: one engine serves several workloads in turn, one vLLM-format JSON each."""

from __future__ import annotations

import json

import pytest


def test_one_engine_serves_each_workload_whole(script, tiny_model_dir, tmp_path, capsys):
    mod = script("throughput_set.py")
    args = mod.parser().parse_args(["--model", tiny_model_dir, "--num-prompts", "3", "--workloads", "16x4", "8x6",
                                    "--num-warmup-prompts", "1", "--tflops", "1", "--bandwidth", "1",
                                    "--output-dir", str(tmp_path)])
    assert mod.run(args) == 0
    first = json.loads((tmp_path / "nanoflow_16_4.json").read_text())
    second = json.loads((tmp_path / "nanoflow_8_6.json").read_text())
    assert (first["total_num_prompt_tokens"], first["total_num_output_tokens"]) == (48, 12)
    assert (second["total_num_prompt_tokens"], second["total_num_output_tokens"]) == (24, 18)
    assert [r["workload"]["seed"] for r in (first, second)] == [0, 1]  # no shared prompt prefixes
    assert [r["timing"]["workloads_served_before"] for r in (first, second)] == [0, 1]
    assert first["timing"]["prefix_cache_hit_tokens"] == second["timing"]["prefix_cache_hit_tokens"] == 0
    assert first["timing"]["compile_seconds"] == second["timing"]["compile_seconds"]  # built once
    assert capsys.readouterr().out.count("Throughput:") == 2


@pytest.mark.parametrize("argv, message", [
    (["--workloads", "1024by512"], "a workload is INPUTxOUTPUT"),
    (["--workloads", "16x4", "--input-len", "8"], "--input-len: name the workloads with --workloads"),
])
def test_bad_workload_lists_are_refused_in_one_line(script, tiny_model_dir, argv, message, capsys):
    mod = script("throughput_set.py")
    assert mod.script_main(mod.run, mod.parser(), ["--model", tiny_model_dir, *argv]) == 2
    assert message in capsys.readouterr().err
