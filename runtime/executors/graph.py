"""The CUDA-graph executor: the multi-stream schedule captured once per binding of its sizes, then replayed.

A binding is the value of every symbol of the plan (the token count, which the engine pads to one of its token
buckets, and the other sizes such as the number of requests), plus the host scalars the graph reads (they are baked
into the capture). The first call with a binding copies the per-call inputs into static buffers, runs the stream
executor once outside capture (Triton compiles, cuBLAS makes its workspaces), then captures it, fork/join onto the
SM partitions included, into one memory pool that every graph of this executor shares, as vLLM and nano-vllm do.
Later calls copy their inputs into the static buffers and replay.

Outputs are views of the graph's static output buffers: the caller must consume them (the engine samples from the
logits right away) before the next call of this executor, which overwrites them. Parameters and buffers (the KV
cache) are captured by address; a call whose parameters moved recaptures that binding.

A graph that captured a NCCL collective holds a reference on its communicator, and `ncclCommDestroy` waits for
every such graph to be destroyed (pytorch/pytorch#115388): graphs still alive in Dynamo's caches made every
tensor-parallel process hang in `destroy_process_group`. `release_graphs` destroys the graphs of every live
executor; the process group's teardown calls it first (`distributed.destroy_tensor_parallel`).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..ir import ScheduleIR
from .base import register_executor
from .program import symbol_getters
from .stream import StreamExecutor


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list  # (argument index, static buffer)
    addresses: tuple  # data pointers of the parameters and buffers it was captured with
    outputs: Any


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every GraphExecutor of the process, for release_graphs


def release_graphs() -> int:
    """Destroy the captured graphs of every live graph executor (they recapture if called again); how many."""
    released = 0
    if torch.cuda.is_available() and _LIVE:
        torch.cuda.synchronize()  # a replay still running must finish before its graph goes
    for executor in list(_LIVE):
        released += executor.release()
    return released


@register_executor
class GraphExecutor:
    name: ClassVar[str] = "graph"

    def __init__(self, ir: ScheduleIR, constants: Mapping[str, torch.Tensor], capacity: int = 64, **settings: Any):
        self.ir = ir
        self.streams = StreamExecutor(ir, constants, **settings)
        self.capacity = capacity
        kinds = [i.kind for i in ir.signature.inputs]
        self._copied = [i for i, k in enumerate(kinds) if k == "input"]
        self._fixed = [i for i, k in enumerate(kinds) if k in ("parameter", "buffer")]
        self._keyed = [i for i, k in enumerate(kinds) if k in ("scalar", "symint")]
        self._getters = [get for _, get in symbol_getters(ir)]
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None  # one memory pool for all of this executor's graphs
        self._capture_stream: torch.cuda.Stream | None = None
        self.counters = {"captures": 0, "recaptures": 0, "replays": 0, "evictions": 0}
        _LIVE.add(self)

    @classmethod
    def unavailable(cls, device: torch.device, settings: Mapping[str, Any]) -> str | None:
        if settings.get("cuda_graphs") is False:
            return "cuda_graphs=False turns CUDA graphs off"
        return StreamExecutor.unavailable(device, settings)

    def __call__(self, args: Sequence[Any]) -> Any:
        key = self._key(args)
        captured = self._graphs.get(key)
        addresses = tuple(args[i].data_ptr() for i in self._fixed)
        if captured is None or captured.addresses != addresses:
            self.counters["recaptures" if captured is not None else "captures"] += 1
            self._graphs.pop(key, None)
            captured = self._capture(args, addresses)
            self._graphs[key] = captured
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
                self.counters["evictions"] += 1
        else:
            self._graphs.move_to_end(key)
        for i, static in captured.inputs:
            static.copy_(args[i], non_blocking=True)
        captured.graph.replay()
        self.counters["replays"] += 1
        return captured.outputs

    def release(self) -> int:
        """Destroy this executor's graphs now rather than when the garbage collector gets to them."""
        released = len(self._graphs)
        for captured in self._graphs.values():
            captured.graph.reset()
        self._graphs.clear()
        return released

    def status(self) -> dict:
        return {**self.streams.status(), "executor": self.name, "graphs": len(self._graphs), **self.counters}

    def _key(self, args: Sequence[Any]) -> tuple:
        """Symbol values, then the host scalars the capture bakes in (a CUDA scalar is copied in instead)."""
        scalars = tuple(a.item() if isinstance(a, torch.Tensor) and not a.is_cuda else None if
                        isinstance(a, torch.Tensor) else a for a in (args[i] for i in self._keyed))
        return tuple(get(args) for get in self._getters) + scalars

    def _capture(self, args: Sequence[Any], addresses: tuple) -> _Captured:
        static = list(args)
        inputs = []
        copied = self._copied + [i for i in self._keyed if isinstance(args[i], torch.Tensor) and args[i].is_cuda]
        for i in copied:
            static[i] = torch.empty_strided(args[i].shape, args[i].stride(), dtype=args[i].dtype,
                                            device=args[i].device)
            static[i].copy_(args[i])
            inputs.append((i, static[i]))
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._capture_stream = torch.cuda.Stream(self.streams.device)
        caller, side = torch.cuda.current_stream(), self._capture_stream
        side.wait_stream(caller)
        with torch.cuda.stream(side):  # warm-up on the capture stream: kernels compile, cuBLAS gets its workspace
            self.streams(static)
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=side):
            outputs = self.streams(static)
        return _Captured(graph, inputs, addresses, outputs)
