#!/usr/bin/env python
"""NanoFlow's optimal throughput C/(2P) and the workload roofline (DESIGN.md "Performance model") for a model and a
workload; with `--result`, the fractions of both that a measured run reached.

    python benchmarks/optimal.py --model llama-3-8b --tflops 780 --bandwidth 3.05 --input-len 1024 --output-len 512
    python benchmarks/optimal.py --model llama-3-8b --device cuda --dtype bfloat16   # measures C and BW here

P counts all parameters (embedding and LM head included), as NanoFlow does; the count without the embedding table
is printed beside it. Core: nanoflow_compiler.bench.optimal.
"""

from __future__ import annotations

import argparse
import json
import sys

from nanoflow_compiler.bench.args import add_workload_args, options_from_args, script_main
from nanoflow_compiler.bench.datasets import make_workload
from nanoflow_compiler.bench.optimal import (
    count_parameters, measure_peaks, model_config, optimal_tokens_per_second, roofline,
)



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optimal.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    p.add_argument("--tflops", type=float, default=None, help="peak GEMM TFLOP/s (default: measured on --device)")
    p.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth TB/s (default: measured)")
    p.add_argument("--max-num-batched-tokens", type=int, default=1024,
                   help="dense batch: tokens per iteration, over which one weight read is shared")
    p.add_argument("--result", default=None, help="a throughput result JSON whose fractions to report")
    return p


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    dtype = opts.resolved_dtype()
    config = model_config(opts.model)
    params = count_parameters(config, dtype)
    peaks = measure_peaks(opts.resolved_device(), dtype, args.tflops, args.bandwidth)
    optimal = optimal_tokens_per_second(peaks.flops_per_second, params.total)
    workload = make_workload(opts.dataset, opts.num_prompts, config.vocab_size, opts.input_len, opts.output_len,
                             seed=opts.seed, max_model_len=config.max_position_embeddings)
    roof = roofline(workload, config, peaks.flops_per_second, peaks.bytes_per_second, args.max_num_batched_tokens,
                    dtype)
    print(f"Peaks: {peaks.detail}")
    print(f"Parameters: {params.total:,} (all, as NanoFlow counts); "
          f"{params.total - params.embedding:,} without the embedding table")
    print(f"Optimal throughput C/(2P): {optimal:.2f} tokens/s")
    print(f"Workload roofline ({workload.name}, {len(workload.requests)} requests, "
          f"mean {workload.describe()['mean_input_len']:.0f} in / {workload.describe()['mean_output_len']:.0f} out): "
          f"{roof['overlapped_tokens_per_second']:.2f} tokens/s overlapped, "
          f"{roof['sequential_tokens_per_second']:.2f} sequential ({roof['bound']}-bound; "
          f"T_compute {roof['t_compute_s']:.3f} s, T_memory {roof['t_memory_s']:.3f} s)")
    out = {"peaks": peaks.to_dict(), "num_params": params.total, "optimal_tokens_per_second": optimal,
           "workload": workload.describe(), "roofline": roof}
    if args.result:
        with open(args.result) as f:
            tps = json.load(f)["tokens_per_second"]
        out["fractions"] = {"of_optimal": tps / optimal,
                            "of_roofline_overlapped": tps / roof["overlapped_tokens_per_second"],
                            "of_roofline_sequential": tps / roof["sequential_tokens_per_second"]}
        print(f"Measured {tps:.2f} tokens/s = {out['fractions']['of_optimal']:.4g} of optimal, "
              f"{out['fractions']['of_roofline_overlapped']:.4g} of the overlapped roofline, "
              f"{out['fractions']['of_roofline_sequential']:.4g} of the sequential one")
    if opts.output_json:
        from nanoflow_compiler.bench.report import environment, write_json

        write_json(opts.output_json, {**out, **environment(opts.resolved_device())})
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
