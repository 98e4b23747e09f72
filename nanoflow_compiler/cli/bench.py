"""`nanoflow bench throughput|latency`: vLLM-format offline throughput, and latency under Poisson arrivals.

The benchmark core lives in the installed package `nanoflow_compiler.bench`; the scripts under `benchmarks/` in the
repository are thin wrappers over the same functions, so both print and write the same thing.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from ..bench.args import add_engine_args, add_latency_args, add_parallel_args, add_workload_args

    p = subparsers.add_parser("bench", help="benchmark throughput or latency (vLLM's output format)",
                              description="Benchmark our engine the way vLLM's benchmark scripts do.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="{throughput,latency}")
    tp = sub.add_parser("throughput", help="offline throughput: all requests at once",
                        description="Offline throughput; prints vLLM's 'Throughput: ...' line and the fraction of "
                                    "NanoFlow's optimal throughput.")
    add_workload_args(tp)
    add_engine_args(tp)
    add_parallel_args(tp)
    lat = sub.add_parser("latency", help="TTFT, TPOT and normalized latency under Poisson arrivals",
                         description="Online latency: requests arrive as a Poisson process at --request-rate.")
    add_workload_args(lat)
    add_engine_args(lat)
    add_parallel_args(lat)
    add_latency_args(lat)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import latency, throughput
    from ..bench.args import options_from_args
    from ..bench.parallel import run_on_ranks

    opts = options_from_args(args)
    bench = throughput if args.bench_command == "throughput" else latency
    run_bench = throughput.run_throughput if bench is throughput else latency.run_latency
    result = run_on_ranks(run_bench, opts)
    if result is not None:  # None: a follower rank under torchrun
        bench.report(result, opts.output_json)
    return 0

