#!/usr/bin/env python
"""Our model and engine under the torch_tensorrt torch.compile backend, when the torch-tensorrt package is
installed; otherwise it says so, writes a "skipped" JSON and exits 0.

    python benchmarks/peers/torch_tensorrt_runner.py --model llama-3-8b --device cuda --dtype bfloat16 \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json results/torch_tensorrt.json

(Named `*_runner.py` so that running it does not shadow the `torch_tensorrt` package on sys.path.) Our paged
attention custom ops have no TensorRT converter, so torch_tensorrt runs them in PyTorch between TensorRT engines.
"""

from __future__ import annotations

import argparse
import sys

from _common import installed, skip
from nanoflow_compiler.bench.args import add_engine_args, add_workload_args, options_from_args, script_main

SYSTEM = "our engine + torch_tensorrt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torch_tensorrt_runner.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    if not installed("torch_tensorrt"):
        return skip(SYSTEM, "torch-tensorrt is not installed (pip install torch-tensorrt)", args)
    import torch_tensorrt  # noqa: F401  (registers the "torch_tensorrt" dynamo backend)

    from nanoflow_compiler.bench.throughput import report, run_throughput

    opts = options_from_args(args)
    opts.backend = "torch_tensorrt"
    opts.compile_options = None
    result = run_throughput(opts, system=SYSTEM)
    report(result, opts.output_json)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, build_parser()))
