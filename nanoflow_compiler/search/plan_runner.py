"""Timed runs of a plan: the `confirm` callback of the search, and the timer of the grid benchmark.

It replays exactly the schedule the search modelled: the plan's nano-ops, each a real kernel (op_bench.py) of its
token count, on the plan's SM partitions in the plan's per-stream order, with CUDA events for cross-stream edges,
over several layers captured into one CUDA graph (as the GraphExecutor runs them). Each nano-op reads and writes
its own buffers, so the data flow is only ordering; the memory traffic per kernel is the real one. The steady-state
layer time is the difference between replays of 2L and L layers divided by L, which removes pipeline fill and drain.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from .errors import ProfilingUnavailableError
from .layer_graph import OpSpec
from .nano_dag import expand
from .search import Plan

SEQUENTIAL_STREAM = "main"


def plan_dag(layer: nx.DiGraph, plan: Plan) -> tuple[nx.DiGraph, dict[str, list[str]]]:
    """The plan's nano-op DAG and per-stream orders; a sequential plan puts every op on one stream."""
    nano = expand(layer, plan.bucket, plan.nano_batches, boundaries=plan.boundaries)
    if plan.sequential:
        for _, d in nano.nodes(data=True):
            d["stream"] = SEQUENTIAL_STREAM
    return nano, plan.order


def unrolled_issue_order(nano: nx.DiGraph, orders: dict[str, list[str]], layers: int) -> nx.DiGraph:
    """Nano-ops of `layers` consecutive layers, (layer, name), with data and stream-order edges: issuing them in a
    topological order records every event before any stream waits on it."""
    g = nx.DiGraph()
    for layer in range(layers):
        for name in nano:
            g.add_node((layer, name), stream=nano.nodes[name]["stream"])
        for u, v, shift in nano.edges(data="shift", default=0):
            if layer + shift < layers:
                g.add_edge((layer, u), (layer + shift, v))
    for order in orders.values():
        flat = [(layer, name) for layer in range(layers) for name in order]
        g.add_edges_from(zip(flat, flat[1:]))
    if not nx.is_directed_acyclic_graph(g):
        raise ValueError("the plan's stream orders deadlock against its data edges")
    return g


class PlanTimer:
    """`timer(plan) -> seconds per layer` on this CUDA device."""

    def __init__(self, layer: nx.DiGraph, make_op: Callable[[OpSpec, int], Callable[[], None]] | None = None,
                 layers: int = 4, repeats: int = 5, device: int = 0):
        import torch

        if not torch.cuda.is_available():
            raise ProfilingUnavailableError("timing a plan needs a CUDA GPU and none is available here")
        from ..runtime import partitions
        from .op_bench import make_cuda_op

        self.torch, self.partitions = torch, partitions
        self.layer, self.layers, self.repeats, self.device = layer, layers, repeats, device
        self.make_op = make_op or make_cuda_op
        self._ops: dict[tuple[OpSpec, int], Callable[[], None]] = {}
        self._parts: dict[tuple, dict] = {}

    def _op(self, spec: OpSpec, tokens: int) -> Callable[[], None]:
        if (spec, tokens) not in self._ops:
            self._ops[(spec, tokens)] = self.make_op(spec, tokens)
        return self._ops[(spec, tokens)]

    def _streams(self, plan: Plan) -> dict:
        if plan.sequential:
            return {SEQUENTIAL_STREAM: self.torch.cuda.Stream(self.device)}
        key = tuple(sorted(plan.sm_plan.items()))
        if key not in self._parts:  # green contexts are never destroyed: make each partition set once
            self._parts[key] = self.partitions.make_partitions(dict(key), self.device, allow_fallback=False)
        return {name: part.stream for name, part in self._parts[key].items()}

    def _capture(self, nano: nx.DiGraph, orders: dict, streams: dict, layers: int):
        torch = self.torch
        unrolled = unrolled_issue_order(nano, orders, layers)
        for _, d in nano.nodes(data=True):  # compile and tune each kernel for its partition before capture
            with torch.cuda.stream(streams[d["stream"]]):
                self._op(d["spec"], d["tokens"])()
        torch.cuda.synchronize(self.device)
        root = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        events = {}
        with torch.cuda.graph(graph, stream=root):
            for s in streams.values():
                s.wait_stream(root)
            for inst in nx.lexicographical_topological_sort(unrolled, key=str):
                d = nano.nodes[inst[1]]
                stream = streams[d["stream"]]
                for pred in unrolled.predecessors(inst):
                    if unrolled.nodes[pred]["stream"] != d["stream"]:
                        stream.wait_event(events[pred])
                with torch.cuda.stream(stream):
                    self._op(d["spec"], d["tokens"])()
                events[inst] = torch.cuda.Event()
                events[inst].record(stream)
            for s in streams.values():
                root.wait_stream(s)
        return graph, root

    def _time(self, graph, root) -> float:
        torch = self.torch
        graph.replay()
        samples = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(root)
            with torch.cuda.stream(root):
                graph.replay()
            end.record(root)
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return sorted(samples)[len(samples) // 2]

    def __call__(self, plan: Plan) -> float:
        nano, orders = plan_dag(self.layer, plan)
        streams = self._streams(plan)
        short = self._time(*self._capture(nano, orders, streams, self.layers))
        long = self._time(*self._capture(nano, orders, streams, 2 * self.layers))
        return (long - short) / self.layers
