#!/usr/bin/env python
"""Latency under Poisson arrivals (TTFT, TPOT, NanoFlow's normalized latency); the same as `nanoflow bench latency`.

    python benchmarks/latency.py --model llama-3-8b --device cuda --dtype bfloat16 --dataset splitwise-like \
        --num-prompts 500 --request-rate 8 --output-json benchmarks/results/llama3-8b_splitwise_rate8.json
"""

from __future__ import annotations

import argparse
import sys

from nanoflow_compiler.bench.args import (
    add_engine_args, add_latency_args, add_parallel_args, add_workload_args, options_from_args, script_main,
)
from nanoflow_compiler.bench.latency import report, run_latency
from nanoflow_compiler.bench.parallel import run_on_ranks


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latency.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    add_parallel_args(p)
    add_latency_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    result = run_on_ranks(run_latency, opts)
    if result is not None:  # None: a follower rank under torchrun
        report(result, opts.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
