#!/usr/bin/env python
"""vLLM as a peer, through its own `vllm bench throughput`, on our fixed-length workload; when vLLM is not
installed it says so, writes a "skipped" JSON and exits 0.

    python benchmarks/peers/vllm_runner.py --peer-model meta-llama/Meta-Llama-3-8B --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json results/vllm.json \
        --peer-args "--load-format dummy"          # random weights, like our presets

vLLM's random dataset with `--random-range-ratio 0` gives every request exactly --input-len / --output-len tokens
(vLLM's benchmark ignores EOS), so the workload matches ours in shape; its prompts are its own random tokens.
(Named `*_runner.py` so that it does not shadow the `vllm` package on sys.path.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import extra_args, finish, fixed_lengths, installed, parser, peer_model, skip
from _external import failed, run_command
from nanoflow_compiler.bench.args import script_main

SYSTEM = "vllm"


def command(args: argparse.Namespace, result_path: str) -> list[str]:
    input_len, output_len = fixed_lengths(args)
    cmd = ["vllm", "bench", "throughput", "--model", peer_model(args), "--dataset-name", "random",
           "--input-len", str(input_len), "--output-len", str(output_len), "--random-range-ratio", "0",
           "--num-prompts", str(args.num_prompts), "--seed", str(args.seed), "--output-json", result_path]
    if args.dtype != "auto":
        cmd += ["--dtype", args.dtype]
    if args.max_num_batched_tokens:
        cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    return cmd + extra_args(args)


def run(args: argparse.Namespace) -> int:
    if not installed("vllm", "vllm"):
        return skip(SYSTEM, "vLLM is not installed (pip install vllm)", args)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = str(Path(tmp) / "vllm.json")
        cmd = command(args, result_path)
        status, output = run_command(cmd)
        if status != 0 or not Path(result_path).is_file():
            return failed(SYSTEM, cmd, status, output, args)
        raw = json.loads(Path(result_path).read_text())
    _, output_len = fixed_lengths(args)
    n = raw["num_requests"]
    output_tokens = n * output_len  # vLLM's JSON has no output count; its benchmark ignores EOS
    return finish(SYSTEM, args, raw["elapsed_time"], n, raw["total_num_tokens"] - output_tokens, output_tokens,
                  {"peer_command": cmd, "peer_result": raw, "output_tokens_source": "num_requests x output_len"})


if __name__ == "__main__":
    sys.exit(script_main(run, parser("vllm_runner.py", __doc__.splitlines()[0])))
