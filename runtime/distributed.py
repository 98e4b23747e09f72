"""Tensor-parallel process groups and a launcher that runs one process per rank.

Every rank runs the same program on its own slice of the weights (SPMD). The model layers read the group from
`get_tp()`, which is world size 1 until `init_tensor_parallel` joins a group, so single-process code is untouched.
`launch(fn, n)` is the one entry point that generate/serve/bench call for `--tensor-parallel-size n`: under torchrun
it joins the group from torchrun's environment; otherwise it spawns n processes itself on a free localhost port.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .executors.graph import release_graphs

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class TPGroup:
    """This process's place in the tensor-parallel group; `group_name` is what functional collectives take."""

    rank: int = 0
    size: int = 1
    group_name: str | None = None


_tp = TPGroup()


def get_tp() -> TPGroup:
    """The current tensor-parallel group (rank 0 of 1 when no group was joined)."""
    return _tp


def is_primary() -> bool:
    """Whether this process prints and returns results (rank 0, or the only process)."""
    return _tp.rank == 0


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_tensor_parallel(
    rank: int | None = None,
    world_size: int | None = None,
    init_method: str = "env://",
    backend: str | None = None,
    local_rank: int | None = None,
    timeout_s: float = 600.0,
) -> TPGroup:
    """Join the group: ranks come from the arguments, else from torchrun's RANK/WORLD_SIZE/LOCAL_RANK variables."""
    global _tp
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if local_rank is None else local_rank
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid tensor-parallel rank {rank} for world size {world_size}")
    if world_size == 1:
        _tp = TPGroup()
        return _tp
    backend = backend or default_backend()
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"tensor-parallel rank {rank} needs GPU {local_rank}, but only {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    _tp = TPGroup(rank, world_size, dist.group.WORLD.group_name)
    return _tp


def destroy_tensor_parallel() -> None:
    """Leave the group. CUDA graphs that captured its collectives go first: NCCL's communicator teardown waits for
    them (see `executors.graph`), so with any left alive every rank would hang here."""
    global _tp
    if dist.is_initialized():
        release_graphs()
        dist.destroy_process_group()
    _tp = TPGroup()


def local_device() -> torch.device:
    """The device this rank computes on: its own GPU under NCCL, else the CPU."""
    if _tp.size > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_port() -> int:
    """A port the OS says is free now, so that two launches on one machine never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def launch(fn: Callable[..., Any], tensor_parallel_size: int, *args, backend: str | None = None, **kwargs) -> Any:
    """Run `fn(*args, **kwargs)` on every rank of a group of `tensor_parallel_size`; return rank 0's result.

    `fn` and its arguments must be picklable (a module-level function) when processes are spawned. Under torchrun
    every process returns its own result; callers print only where `is_primary()`.
    """
    if tensor_parallel_size < 1:
        raise ValueError(f"--tensor-parallel-size must be at least 1, got {tensor_parallel_size}")
    if under_torchrun():
        if int(os.environ["WORLD_SIZE"]) != tensor_parallel_size:
            raise ValueError(
                f"torchrun started {os.environ['WORLD_SIZE']} processes but --tensor-parallel-size is "
                f"{tensor_parallel_size}"
            )
        init_tensor_parallel(backend=backend)
        try:
            return fn(*args, **kwargs)
        finally:
            destroy_tensor_parallel()
    if tensor_parallel_size == 1:
        return fn(*args, **kwargs)
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < tensor_parallel_size:
        raise ValueError(
            f"--tensor-parallel-size {tensor_parallel_size} needs {tensor_parallel_size} GPUs; "
            f"{torch.cuda.device_count()} are visible"
        )
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    procs = mp.start_processes(
        _worker, args=(fn, args, kwargs, tensor_parallel_size, init_method, backend, results),
        nprocs=tensor_parallel_size, start_method="spawn", join=False,
    )
    outcome = None
    try:
        # Drain the queue while waiting: a large result blocks rank 0's put until someone reads it.
        while not procs.join(timeout=0.2):
            outcome = _drain(results, outcome)
    except mp.ProcessRaisedException:
        outcome = _drain(results, outcome)
        if outcome is not None and not outcome[0]:
            raise outcome[1] from None  # a rank's ValueError (bad input) reads as if raised here
        raise
    outcome = _drain(results, outcome)
    return None if outcome is None else outcome[1]


def _drain(results, outcome: tuple[bool, Any] | None) -> tuple[bool, Any] | None:
    """The latest (ok, value) a rank sent, except that a first failure is kept."""
    while not results.empty():
        sent = pickle.loads(results.get())
        if outcome is None or outcome[0]:
            outcome = sent
    return outcome


def _worker(rank, fn, args, kwargs, world_size, init_method, backend, results) -> None:
    init_tensor_parallel(rank, world_size, init_method, backend, local_rank=rank)
    if backend == "gloo":  # ranks share the CPU cores; oversubscribed threads slow every rank down
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        result = fn(*args, **kwargs)
        if rank == 0:
            # By value: torch's queue would share tensors through handles that die with this process.
            results.put(pickle.dumps((True, result)))
    except ValueError as e:  # bad input: the launcher re-raises it without this process's traceback
        results.put(pickle.dumps((False, e)))
        raise
    finally:
        destroy_tensor_parallel()
