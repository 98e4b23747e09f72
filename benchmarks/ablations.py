#!/usr/bin/env python
"""NanoFlow's ablation in one run: the same model, workload and engine under several backend settings, each
reported as a throughput ratio against the first (overlap off: one stream, no nano-batches).

    python benchmarks/ablations.py --model llama-3-8b --device cuda --dtype bfloat16 --input-len 1024 \
        --output-len 512 --num-prompts 500 --max-num-batched-tokens 1024 --output-json results/ablations.json

The settings are `nanoflow` compile options (nanoflow_compiler/options.py); `--compile-options` is merged into
every one (e.g. nano_batches, sm_plan), `--only` picks some. Any executor fallback the backend reports is kept
with its row, so a row that did not run what it names says so. C/BW are measured once; each setting runs in its own
process with its own copy of the model (the same seed, so the same weights), so that no setting inherits another's
GPU memory.
"""

from __future__ import annotations

import argparse
import sys

from nanoflow_compiler.bench import runner
from nanoflow_compiler.bench.args import add_engine_args, add_workload_args, options_from_args, script_main
from nanoflow_compiler.bench.optimal import measure_peaks
from nanoflow_compiler.bench.report import environment, write_json
from nanoflow_compiler.bench.throughput import run_throughput_isolated

# name -> compile options; the first is the baseline of every ratio.
SETTINGS: dict[str, dict] = {
    "overlap off (one stream, no split)": {"overlap": False, "executor": "sequential", "cuda_graphs": False},
    "nano-batches, one stream": {"overlap": True, "executor": "sequential", "cuda_graphs": False},
    "overlap on (streams, SM partitions)": {"overlap": True, "executor": "stream", "cuda_graphs": False},
    "overlap off + CUDA graphs": {"overlap": False, "executor": "graph", "cuda_graphs": True},
    "overlap on + CUDA graphs": {"overlap": True, "executor": "graph", "cuda_graphs": True},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablations.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    p.add_argument("--only", default=None,
                   help="comma-separated 1-based indices of the settings to run (the first one given is the "
                        "baseline); settings: " + "; ".join(f"{i}: {n}" for i, n in enumerate(SETTINGS, 1)))
    p.set_defaults(num_prompts=200)
    return p


def chosen(only: str | None) -> list[str]:
    names = list(SETTINGS)
    if not only:
        return names
    try:
        picks = [int(i) for i in only.split(",")]
    except ValueError as e:
        raise ValueError(f"--only takes comma-separated indices 1..{len(names)}, got {only!r}") from e
    if any(not 1 <= i <= len(names) for i in picks):
        raise ValueError(f"--only takes indices 1..{len(names)}, got {only!r}")
    return [names[i - 1] for i in picks]


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    if not opts.compile:
        raise ValueError("ablations compare backend settings; drop --no-compile")
    peaks = measure_peaks(opts.resolved_device(), opts.resolved_dtype(), opts.tflops, opts.bandwidth)
    runner.release()  # the measurement's buffers go back before the first setting's process sizes its KV cache
    rows, runs = [], []
    names = chosen(args.only)
    for name in names:
        options = {**SETTINGS[name], **(opts.compile_options or {})}
        print(f"=== {name}: {options}", flush=True)
        result = run_throughput_isolated(opts, peaks, options, system=f"nanoflow[{name}]")
        runs.append(result)
        rows.append({
            "setting": name, "compile_options": options, "tokens_per_second": result["tokens_per_second"],
            "output_tokens_per_second": result["output_tokens_per_second"], "elapsed_time": result["elapsed_time"],
            "total_num_tokens": result["total_num_tokens"], "compiled_with": result["compiled_with"],
            "fraction_of_optimal": result["optimal"]["fraction_of_optimal"], "warnings": result["warnings"],
            "ratio": result["tokens_per_second"] / rows[0]["tokens_per_second"] if rows else 1.0,
        })
        if opts.output_json:  # after every setting: a time-boxed run keeps the settings it finished
            write_json(opts.output_json, {"baseline": rows[0]["setting"], "ablations": rows,
                                          "complete": len(rows) == len(names), "model": runs[0]["model"],
                                          "workload": runs[0]["workload"], "optimal": runs[0]["optimal"],
                                          "runs": runs, **environment(opts.resolved_device())})
    print(f"\n{'setting':<40}{'total tok/s':>14}{'output tok/s':>14}{'ratio':>8}  notes")
    for row in rows:
        notes = f"{len(row['warnings'])} warning(s)" if row["warnings"] else ""
        print(f"{row['setting']:<40}{row['tokens_per_second']:>14.2f}{row['output_tokens_per_second']:>14.2f}"
              f"{row['ratio']:>8.3f}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
