#!/usr/bin/env python
"""The benchmark workloads: statistics of each synthetic dataset, or one workload written out as JSON lines.

    python benchmarks/datasets.py --num-prompts 1000                  # a table of all four datasets
    python benchmarks/datasets.py --dataset sharegpt-like --vocab-size 128256 --dump sharegpt.jsonl

Each dumped line is {"task_id", "input_ids", "output_tokens"}, the dataset format of `trtllm-bench`, so peers can
run exactly our prompts. Lengths and their sources: see nanoflow_compiler/bench/datasets.py (the NanoFlow paper's
trace statistics).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from nanoflow_compiler.bench.args import script_main
from nanoflow_compiler.bench.datasets import DATASETS, TRACE_STATS, make_workload


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datasets.py", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=DATASETS, default=None, help="one dataset (default: all, as a table)")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=None)
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=128256, help="token ids are drawn from [0, vocab-size)")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump", default=None, help="write the workload as JSON lines (needs --dataset)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.dump and not args.dataset:
        raise ValueError("--dump needs --dataset")
    names = [args.dataset] if args.dataset else list(DATASETS)
    print(f"{'dataset':<16}{'requests':>9}{'in mean':>9}{'in p50':>8}{'in p99':>8}{'out mean':>10}{'out p50':>9}"
          f"{'out p99':>9}  paper mean in/out")
    for name in names:
        w = make_workload(name, args.num_prompts, args.vocab_size, args.input_len, args.output_len, seed=args.seed,
                          max_model_len=args.max_model_len)
        ins = np.array([r.prompt_len for r in w.requests])
        outs = np.array([r.output_len for r in w.requests])
        stats = TRACE_STATS.get(name)
        paper = f"{stats.input_mean:.0f}/{stats.output_mean:.0f}" if stats else "-"
        print(f"{name:<16}{len(ins):>9}{ins.mean():>9.1f}{np.median(ins):>8.0f}{np.percentile(ins, 99):>8.0f}"
              f"{outs.mean():>10.1f}{np.median(outs):>9.0f}{np.percentile(outs, 99):>9.0f}  {paper}")
        if args.dump:
            with open(args.dump, "w") as f:
                for i, r in enumerate(w.requests):
                    f.write(json.dumps({"task_id": i, "input_ids": r.prompt_token_ids, "output_tokens": r.output_len})
                            + "\n")
            print(f"wrote {len(w.requests)} requests to {args.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
