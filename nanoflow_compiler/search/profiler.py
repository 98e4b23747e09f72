"""The profiling loop: time each op kind over token counts and SM counts, then pairwise interference.

What is measured: every op kind of the layer graph alone, at every token count a nano-batch of the requested buckets
can have, on every SM count of the device's grid (whole device on the default stream, smaller counts on a disjoint
partition); then, per pair of streams, a representative kind of each co-running on SM pairs (n, m), n + m <= SMs.
Order is coarse to fine (grid endpoints first, halving from there), so that a time budget that runs out leaves a
uniform coarser table the cost model interpolates, never a hole; the endpoints are always measured.
"""

from __future__ import annotations

import time
import warnings
from typing import Protocol
from collections.abc import Callable

import networkx as nx
from tqdm import tqdm

from .errors import ProfilingUnavailableError, SearchWarning
from .layer_graph import OpSpec
from .nano_dag import split_points
from .profile_db import ProfileDB

Op = Callable[[], None]


class Timer(Protocol):
    def solo(self, op: Op, sms: int) -> float:
        """Seconds per launch of `op` alone on `sms` SMs."""

    def corun(self, op_a: Op, sms_a: int, op_b: Op, sms_b: int) -> tuple[float, float]:
        """Seconds per launch of each while both run, each on its own partition, the other busy throughout."""


def token_counts(buckets: list[int], max_nano: int, granularity: int) -> list[int]:
    """Every nano-batch size the search can ask for: the pieces of each bucket split 1..max_nano ways."""
    sizes = set()
    for bucket in buckets:
        for k in range(1, max_nano + 1):
            try:
                points = split_points(bucket, k, granularity)
            except ValueError:
                continue
            sizes.update(b - a for a, b in zip(points, points[1:]))
    return sorted(sizes)


def coarse_to_fine(values: list[int]) -> list[list[int]]:
    """Levels: the endpoints, then the midpoints of the gaps left, and so on (bisection order)."""
    values = sorted(values)
    levels, taken = [sorted({values[0], values[-1]})], {0, len(values) - 1}
    gaps = [(0, len(values) - 1)]
    while gaps:
        level, next_gaps = [], []
        for lo, hi in gaps:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                taken.add(mid)
                level.append(values[mid])
                next_gaps += [(lo, mid), (mid, hi)]
        if level:
            levels.append(sorted(level))
        gaps = next_gaps
    return levels


def _representatives(layer: nx.DiGraph, db: ProfileDB, tokens: int) -> dict[str, tuple[OpSpec, list[str]]]:
    """Per stream: its kind with the most time on the whole device, and the op classes that run there."""
    reps = {}
    for stream in sorted({d["stream"] for _, d in layer.nodes(data=True)}):
        nodes = [d for _, d in layer.nodes(data=True) if d["stream"] == stream]
        best = max(nodes, key=lambda d: db.ops[d["spec"].kind][tokens][db.device.sm_count])
        reps[stream] = (best["spec"], sorted({d["cls"] for d in nodes}))
    return reps


def profile(layer: nx.DiGraph, buckets: list[int], db: ProfileDB, *, timer: Timer | None = None,
            make_op: Callable[[OpSpec, int], Op] | None = None, max_nano: int = 4, granularity: int = 16,
            interference: bool = True, time_budget: float | None = None, progress: bool = True) -> ProfileDB:
    """Fill `db` for the layer's op kinds; without a timer this needs CUDA (GPU engineer's partitions + kernels)."""
    if timer is None or make_op is None:
        from .op_bench import make_cuda_op

        timer, make_op = timer or CudaTimer(), make_op or make_cuda_op
    deadline = None if time_budget is None else time.monotonic() + time_budget
    specs = sorted({d["spec"] for _, d in layer.nodes(data=True)}, key=lambda s: s.kind)
    counts = token_counts(buckets, max_nano, granularity)
    total, g = db.device.sm_count, db.device.sm_granularity
    sm_levels = coarse_to_fine(sorted(set(range(g, total + 1, g)) | {total}))
    streams = {d["stream"] for _, d in layer.nodes(data=True)}
    pairs = [(n, m) for n in range(g, total, g) for m in range(g, total - n + 1, g)]
    pair_levels = _pair_levels(pairs, g) if interference and len(streams) > 1 else []
    corun_runs = len(streams) * (len(streams) - 1) // 2 * len(pairs) if pair_levels else 0
    bar = tqdm(total=len(specs) * len(counts) * sum(map(len, sm_levels)) + corun_runs, desc="profiling", unit="run",
               disable=not progress)
    skipped = _profile_solo(db, timer, make_op, specs, counts, sm_levels, deadline, bar)
    if pair_levels:
        tokens = min(counts, key=lambda c: abs(c - max(buckets) / 2))  # a typical nano-batch
        skipped += _profile_pairs(db, timer, make_op, _representatives(layer, db, tokens), tokens, pair_levels,
                                  deadline, bar)
    bar.close()
    if skipped:
        warnings.warn(f"the time budget ran out: {skipped} measurements skipped; the cost model interpolates the "
                      f"coarser grid that was measured", SearchWarning, stacklevel=2)
    return db


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _profile_solo(db, timer, make_op, specs, counts, sm_levels, deadline, bar) -> int:
    """Solo times, a level of SM counts at a time; the first level (the endpoints) whatever the budget."""
    skipped = 0
    for level_index, level in enumerate(sm_levels):
        for spec in specs:
            for tokens in counts:
                if level_index and _past(deadline):
                    skipped += len(level)
                    continue
                if all(sms in db.ops.get(spec.kind, {}).get(tokens, {}) for sms in level):
                    bar.update(len(level))  # measured by an earlier run of the same database
                    continue
                op = make_op(spec, tokens)
                for sms in level:
                    _solo(db, timer, spec, op, tokens, sms)
                    bar.update(1)
    return skipped


def _profile_pairs(db, timer, make_op, reps, tokens, pair_levels, deadline, bar) -> int:
    """Co-running slowdowns of each pair of streams' representative kinds, stored per pair of op classes."""
    skipped = 0
    for (spec_a, cls_a), (spec_b, cls_b) in _stream_pairs(reps):
        op_a, op_b = make_op(spec_a, tokens), make_op(spec_b, tokens)
        for level_index, level in enumerate(pair_levels):
            for n, m in level:
                if level_index and _past(deadline):
                    skipped += 1
                    continue
                ta, tb = timer.corun(op_a, n, op_b, m)
                fa = ta / _solo(db, timer, spec_a, op_a, tokens, n)
                fb = tb / _solo(db, timer, spec_b, op_b, tokens, m)
                for ca in cls_a:
                    for cb in cls_b:
                        db.add_interference(f"class:{ca}", n, f"class:{cb}", m, fa, fb)
                bar.update(1)
    return skipped


def _solo(db: ProfileDB, timer: Timer, spec: OpSpec, op: Op, tokens: int, sms: int) -> float:
    """The stored solo time, measured first if missing (a slowdown needs the solo time on the same SMs)."""
    known = db.ops.get(spec.kind, {}).get(tokens, {}).get(sms)
    if known is None:
        known = timer.solo(op, sms)
        db.add_time(spec.kind, tokens, sms, known)
    return known


def _stream_pairs(reps: dict) -> list:
    items = [reps[s] for s in sorted(reps)]
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1:]]


def _pair_levels(pairs: list[tuple[int, int]], g: int) -> list[list[tuple[int, int]]]:
    """SM pairs coarse to fine: a pair joins the level of its coarser coordinate (multiples of 32g, 16g, ...)."""
    def level(x: int) -> int:
        step, k = 32, 0
        while step > 1 and (x // g) % step:
            step //= 2
            k += 1
        return k
    buckets: dict[int, list] = {}
    for n, m in pairs:
        buckets.setdefault(max(level(n), level(m)), []).append((n, m))
    return [buckets[k] for k in sorted(buckets)]


class CudaTimer:
    """CUDA-event timing of CUDA-graph replays on SM partitions. Graphs, because the executor replays graphs too
    and short kernels launched one by one would time the CPU; each graph is captured forked onto the partition's
    stream and joined (replay keeps every kernel on its partition, H100.md) and replayed from plain side streams."""

    def __init__(self, device: int = 0, target_s: float = 2e-3, repeats: int = 3):
        import torch

        if not torch.cuda.is_available():
            raise ProfilingUnavailableError("profiling needs a CUDA GPU and none is available here; on a machine "
                                            "without one, compile with options={'plan': 'auto'} to use the "
                                            "analytical cost model instead")
        from ..runtime import partitions

        self.torch, self.partitions = torch, partitions
        self.device, self.target_s, self.repeats = device, target_s, repeats
        self.total = torch.cuda.get_device_properties(device).multi_processor_count
        self._parts: dict[tuple[int, ...], dict] = {}  # green contexts live as long as the process: reuse them
        self._replay = (torch.cuda.Stream(device), torch.cuda.Stream(device))

    def _stream(self, sms: int):
        """The whole device is a plain stream; anything less a disjoint partition."""
        if sms == self.total:
            return self.torch.cuda.Stream(self.device)
        return self._partitions(sms)["p0"].stream

    def _partitions(self, *sms: int) -> dict:
        if sms not in self._parts:
            self._parts[sms] = self.partitions.make_partitions({f"p{i}": n for i, n in enumerate(sms)}, self.device,
                                                               allow_fallback=False)
        return self._parts[sms]

    def _graph(self, op: Op, stream, reps: int):
        torch = self.torch
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles and tunes the kernels for this SM budget before capture
                op()
        torch.cuda.synchronize(self.device)
        root = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=root):
            stream.wait_stream(root)
            with torch.cuda.stream(stream):
                for _ in range(reps):
                    op()
            root.wait_stream(stream)
        return graph

    def _time(self, graph, background=None) -> float:
        """Median seconds of one replay; `background` is replayed first on the other side stream."""
        torch = self.torch
        main, side = self._replay
        graph.replay()
        torch.cuda.synchronize(self.device)
        samples = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if background is not None:
                with torch.cuda.stream(side):
                    background.replay()
            with torch.cuda.stream(main):
                start.record(main)
                graph.replay()
                end.record(main)
            torch.cuda.synchronize(self.device)
            samples.append(start.elapsed_time(end) / 1e3)
        return sorted(samples)[len(samples) // 2]

    def _reps(self, op: Op, stream) -> int:
        once = self._time(self._graph(op, stream, 1))
        return max(1, min(200, round(self.target_s / max(once, 1e-6))))

    def solo(self, op: Op, sms: int) -> float:
        stream = self._stream(sms)
        reps = self._reps(op, stream)
        return self._time(self._graph(op, stream, reps)) / reps

    def corun(self, op_a: Op, sms_a: int, op_b: Op, sms_b: int) -> tuple[float, float]:
        parts = self._partitions(sms_a, sms_b)
        sa, sb = parts["p0"].stream, parts["p1"].stream
        return self._corun(op_a, sa, op_b, sb), self._corun(op_b, sb, op_a, sa)

    def _corun(self, op: Op, stream, other: Op, other_stream) -> float:
        """Time `op` while `other` runs for at least twice as long, started first so it covers `op` throughout."""
        reps = self._reps(op, stream)
        graph = self._graph(op, stream, reps)
        alone = self._time(graph)
        other_reps = self._reps(other, other_stream)
        other_once = self._time(self._graph(other, other_stream, other_reps)) / other_reps
        background = self._graph(other, other_stream, min(2000, max(1, round(2 * alone / other_once))))
        return self._time(graph, background) / reps
