#!/usr/bin/env python
"""Offline throughput in vLLM's format; the same as `nanoflow bench throughput` (core: nanoflow_compiler.bench).

    python benchmarks/throughput.py --model llama-3-8b --device cuda --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json benchmarks/results/llama3-8b_1024_512.json
"""

from __future__ import annotations

import argparse
import sys

from nanoflow_compiler.bench.args import (
    add_engine_args, add_parallel_args, add_workload_args, options_from_args, script_main,
)
from nanoflow_compiler.bench.parallel import run_on_ranks
from nanoflow_compiler.bench.throughput import report, run_throughput


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="throughput.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    add_parallel_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    result = run_on_ranks(run_throughput, opts)
    if result is not None:  # None: a follower rank under torchrun
        report(result, opts.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
