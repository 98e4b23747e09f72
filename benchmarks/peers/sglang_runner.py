#!/usr/bin/env python
"""SGLang as a peer, through `python -m sglang.bench_offline_throughput`, on our fixed-length workload; when
SGLang is not installed it says so, writes a "skipped" JSON and exits 0.

    python benchmarks/peers/sglang_runner.py --peer-model meta-llama/Meta-Llama-3-8B --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json results/sglang.json \
        --peer-args "--load-format dummy"

SGLang samples random lengths in [ratio * len, len], so `--random-range-ratio 1` makes them fixed; its offline
benchmark ignores EOS by default. (Named `*_runner.py` so that it does not shadow the `sglang` package.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import extra_args, finish, fixed_lengths, installed, parser, peer_model, python, skip
from _external import failed, run_command
from nanoflow_compiler.bench.args import script_main

SYSTEM = "sglang"


def command(args: argparse.Namespace, result_path: str) -> list[str]:
    input_len, output_len = fixed_lengths(args)
    cmd = [python(), "-m", "sglang.bench_offline_throughput", "--model-path", peer_model(args),
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--random-range-ratio", "1", "--num-prompts", str(args.num_prompts), "--seed", str(args.seed),
           "--result-filename", result_path]
    if args.dtype != "auto":
        cmd += ["--dtype", args.dtype]
    if args.max_num_batched_tokens:
        cmd += ["--chunked-prefill-size", str(args.max_num_batched_tokens)]
    return cmd + extra_args(args)


def run(args: argparse.Namespace) -> int:
    if not installed("sglang"):
        return skip(SYSTEM, "SGLang is not installed (pip install sglang)", args)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = str(Path(tmp) / "sglang.jsonl")
        cmd = command(args, result_path)
        status, output = run_command(cmd)
        if status != 0 or not Path(result_path).is_file():
            return failed(SYSTEM, cmd, status, output, args)
        raw = json.loads(Path(result_path).read_text().strip().splitlines()[-1])
    return finish(SYSTEM, args, raw["total_latency"], raw["successful_requests"], raw["total_input_tokens"],
                  raw["total_output_tokens"], {"peer_command": cmd, "peer_result": raw})


if __name__ == "__main__":
    sys.exit(script_main(run, parser("sglang_runner.py", __doc__.splitlines()[0])))
