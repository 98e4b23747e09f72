#!/usr/bin/env python
"""Our model and our engine under torch.compile's stock "inductor" backend: the same runtime, the same workload,
only the compiler differs, so the ratio to `benchmarks/throughput.py` is what the nanoflow backend buys.

    python benchmarks/peers/inductor.py --model llama-3-8b --device cuda --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json results/inductor.json
"""

from __future__ import annotations

import argparse
import sys

from nanoflow_compiler.bench.args import add_engine_args, add_workload_args, options_from_args, script_main
from nanoflow_compiler.bench.throughput import report, run_throughput

BACKEND = "inductor"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inductor.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    opts.backend = BACKEND
    opts.compile_options = None  # nanoflow's options mean nothing to inductor
    report(run_throughput(opts, system=f"our engine + {BACKEND}"), opts.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, build_parser()))
