"""Benchmarks under tensor parallelism: rank 0 runs the benchmark itself, the other ranks build the same engine and
follow its batches, and only rank 0's result (the one that prints and writes JSON) comes back."""

from __future__ import annotations

from collections.abc import Callable

from .. import tensor_parallel
from . import runner
from .args import BenchOptions


def run_on_ranks(run: Callable[[BenchOptions], dict], opts: BenchOptions) -> dict | None:
    """`run(opts)` (`run_throughput`, `run_latency`) over `opts.tensor_parallel_size` ranks; this process runs it
    itself at size 1. Returns rank 0's result, None on a follower (under torchrun)."""
    size = opts.tensor_parallel_size
    tensor_parallel.check(size, opts.model, opts.device)
    return tensor_parallel.launch(_rank, size, run, opts, device=opts.resolved_device())


def _rank(run: Callable[[BenchOptions], dict], opts: BenchOptions) -> dict | None:
    from ..runtime.distributed import is_primary
    from ..runtime.tp_channel import leading

    if not is_primary():
        # The engine rank 0's `run` builds: the same model (seeded) and config, built at the same point of start-up.
        engine = runner.build_engine(runner.load(opts), runner.engine_config(opts))
        tensor_parallel.follow(engine)
        return None
    with leading():
        return run(opts)
