"""Per-step timings of one call of a bound schedule: when each op ran, on which stream, for the Gantt chart.

A profiling wrapper rather than an executor setting, so that the executors' hot path stays as it is:
`step_timings(schedule)` swaps the schedule's executor, for the calls inside the block, for one that runs the same
program through the same issue loop (`run_streams`, `run_program`) with each stream op's operator wrapped. On CUDA
the wrapper records an event on the op's stream right before and after the launch; a graph executor is timed
through its stream executor, outside any capture, since events inside a graph cannot be read per replay. On the CPU
the wall clock brackets each op (ops run one after another there). Times are ms from a mark taken on the caller's
stream before the call. An op's start event is recorded after its waits on its stream, so it marks when the op
could start there (what it waited for, and its queue, included); the event pairs add a little work per op, so the
chart shows the schedule's shape, while the call's plain time is what a benchmark should report.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .base import CompiledSchedule
from .graph import GraphExecutor
from .program import Program, Step, scale_cuts
from .sequential import run_program
from .stream import StreamExecutor, _layout_key, run_streams


@dataclass
class StepTiming:
    """One op of one call. `stream` names the planned stream (its op classes and SMs), `op` the graph node,
    `nano_batch` the op's nano-batch within its class (None: all tokens at once), `layer` the caller's mapping."""

    stream: str
    op_id: int
    op: str
    target: str
    cls: str
    nano_batch: int | None
    tokens: tuple[int, int] | None
    layer: int | None
    start_ms: float
    end_ms: float

    def to_json(self) -> dict:
        """The record `benchmarks/plots.py gantt` reads: stream, op, start_ms, end_ms, class, and the rest."""
        data = asdict(self)
        data["class"] = data.pop("cls").lower()
        data["tokens"] = None if self.tokens is None else list(self.tokens)
        return data


@contextlib.contextmanager
def step_timings(schedule: CompiledSchedule, layer_of: Mapping[int, int] | None = None) -> Iterator[list]:
    """Time every call of `schedule` inside the block per op; yields the list the StepTimings are appended to.
    `layer_of` maps op ids to layer indices for the records (the IR itself has no layers)."""
    if getattr(schedule, "ir", None) is None or not isinstance(schedule, CompiledSchedule):
        raise ValueError(f"step timings need a nanoflow CompiledSchedule; got {type(schedule).__name__} (a graph the "
                         f"backend fell back on runs unscheduled: {getattr(schedule, 'reason', 'no reason given')})")
    records: list[StepTiming] = []
    inner = schedule.executor
    schedule.executor = _TimedExecutor(inner, records, dict(layer_of or {}))
    try:
        yield records
    finally:
        schedule.executor = inner


class _Clock:
    """Marks on the current CUDA stream (events), or on the host clock."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, origin: Any, mark: Any) -> float:
        return origin.elapsed_time(mark) if self.cuda else (mark - origin) * 1e3


class _TimedExecutor:
    def __init__(self, inner: Any, records: list, layer_of: dict[int, int]):
        self.inner, self.records, self.layer_of = inner, records, layer_of
        self.name = getattr(inner, "name", "timed")

    def __call__(self, args: Sequence[Any]) -> Any:
        executor = self.inner.streams if isinstance(self.inner, GraphExecutor) else self.inner
        program, env = executor._bind(args)
        cuda = isinstance(executor, StreamExecutor) or any(
            isinstance(a, torch.Tensor) and a.is_cuda for a in args)
        clock, marks = _Clock(cuda), []
        origin = clock.mark()
        with torch.no_grad():
            streams = executor._streams[_layout_key(program.bucket.streams)] if isinstance(
                executor, StreamExecutor) else None
            if streams is None:  # the sequential executor, or one stream with the whole device
                steps = [replace(s, fn=self._wrap(s.fn, s, clock, marks)) if _timed(s) else s for s in program.steps]
                out = run_program(replace(program, steps=steps), env)
            else:
                plan, fns, events = executor._prepared(program)
                fns = [self._wrap(fn, ps.step, clock, marks) if fn is not None and _timed(ps.step) else fn
                       for ps, fn in zip(plan.steps, fns)]
                out = run_streams(program, plan, fns, env, streams, events)
        if cuda:
            torch.cuda.synchronize()
        self.records.extend(self._record(program, step, clock.ms(origin, a), clock.ms(origin, b))
                            for step, a, b in marks)
        return out

    @staticmethod
    def _wrap(fn: Callable, step: Step, clock: _Clock, marks: list) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock.mark()
            result = fn(*args, **kwargs)
            marks.append((step, start, clock.mark()))
            return result

        return timed

    def _record(self, program: Program, step: Step, start_ms: float, end_ms: float) -> StepTiming:
        op, bucket = step.op, program.bucket
        spec = next(s for s in bucket.streams if s.id == op.stream)
        nano = None
        if step.span is not None and op.cls in bucket.nano_batches:
            sizes = bucket.nano_batches[op.cls]
            bounds = scale_cuts([0, *itertools.accumulate(sizes)], program.tokens)
            nano = bisect.bisect_right(bounds, step.span[0]) - 1
        return StepTiming(f"{'+'.join(spec.classes)} ({spec.sms} SMs)", op.id, op.node, op.target, op.cls, nano,
                          step.span, self.layer_of.get(op.id), start_ms, end_ms)


def _timed(step: Step) -> bool:
    """Ops that launch work on a stream; allocations, views and host arithmetic take no device time."""
    return step.op.stream is not None
