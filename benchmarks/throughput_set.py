#!/usr/bin/env python
"""Offline throughput of several workloads served in turn by one engine (compiled and warmed up once), one vLLM-format
JSON per workload: the five issue-7 workloads in about a third of the device time of five `throughput.py` runs.

    python benchmarks/throughput_set.py --model llama-3-8b --device cuda --dtype bfloat16 --num-prompts 256 \
        --max-num-batched-tokens 1024 --workloads 1024x512 512x1024 splitwise-like lmsys-like sharegpt-like \
        --output-dir benchmarks/results/h100

A workload is INPUTxOUTPUT (random prompts of those lengths) or a dataset name. Workload i draws its prompts with
seed --seed + i, so that no workload's prompts share prefixes with an earlier one's (each JSON counts the prefix-cache
hits of its run, `timing.prefix_cache_hit_tokens`). Engine counters in each JSON's `engine_stats` add up over the
workloads served so far (`timing.workloads_served_before`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from nanoflow_compiler.bench.args import add_engine_args, add_workload_args, options_from_args, script_main
from nanoflow_compiler.bench.datasets import DATASETS
from nanoflow_compiler.bench.throughput import report, run_throughput_set


def workload_options(opts, spec: str, index: int):
    """The options of one workload: `opts` with its dataset, lengths and seed replaced."""
    seed = opts.seed + index
    if spec in DATASETS and spec != "random":
        return dataclasses.replace(opts, dataset=spec, input_len=None, output_len=None, seed=seed)
    try:
        input_len, output_len = (int(v) for v in spec.split("x"))
    except ValueError:
        raise ValueError(f"a workload is INPUTxOUTPUT (e.g. 1024x512) or one of "
                         f"{', '.join(d for d in DATASETS if d != 'random')}; got {spec!r}") from None
    return dataclasses.replace(opts, dataset="random", input_len=input_len, output_len=output_len, seed=seed)


def json_name(spec: str) -> str:
    """The file name `benchmarks/run_h100.sh` and the plots expect: nanoflow_1024_512.json, nanoflow_lmsys-like.json."""
    return f"nanoflow_{spec.replace('x', '_')}.json" if spec not in DATASETS else f"nanoflow_{spec}.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="throughput_set.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    p.add_argument("--workloads", nargs="+", required=True, metavar="WORKLOAD",
                   help="INPUTxOUTPUT or a dataset name, each served in turn")
    p.add_argument("--output-dir", default=None, help="write nanoflow_<workload>.json here")
    return p


def run(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("--dataset", args.dataset != "random"), ("--input-len", args.input_len),
                                      ("--output-len", args.output_len), ("--output-json", args.output_json)) if value]
    if given:
        raise ValueError(f"{', '.join(given)}: name the workloads with --workloads and the folder with --output-dir")
    opts = options_from_args(args)
    workloads = [workload_options(opts, spec, i) for i, spec in enumerate(args.workloads)]
    results = run_throughput_set(opts, workloads)
    for spec, result in zip(args.workloads, results):
        print(f"=== {spec}")
        report(result, str(Path(args.output_dir) / json_name(spec)) if args.output_dir else None)
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
