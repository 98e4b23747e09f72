"""The multi-stream executor: each stream of the plan on its own disjoint SM partition, events for cross-stream waits.

Per bucket layout the streams' SM counts become green-context partitions (`partitions.make_partitions`), made once
per process. A call forks every stream from the caller's current stream, issues each step on its stream in the
plan's issue order, records an event after each op that another stream waits for, and joins all streams back into
the caller's stream. On a partition smaller than the device, matmuls run the SM-aware persistent GEMM with that
partition's SM count, and paged attention sizes its grid from the stream's budget (`partitions.sm_budget`); with
the `batch_invariant` compile option every matmul runs that GEMM and attention one KV split per token (`routing.py`).

Memory: the caching allocator reuses a freed block on the stream it was allocated on, in that stream's order only.
So each buffer is allocated on the stream of its first user, and every other stream that touches it is recorded on
it (`record_stream`) as soon as it exists; the block then waits for those streams' work before it is reused, also
inside a CUDA-graph capture (where such blocks stay reserved until the capture ends).

Where disjoint partitions are unavailable (no green-context driver route) the streams are plain streams sharing all
SMs: the executor warns, notes it in the IR's provenance and reports it in `status()`; kernels still bound their
grids by their stream's SM count, which is a soft partition only.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import partitions
from ..ir import Ref, ScheduleIR, Seq, StreamSpec
from .base import register_executor
from .program import Program, Step
from .routing import batch_invariant, routed
from .sequential import SequentialExecutor, run_program

_PARTITIONS: dict[tuple, dict[str, partitions.PartitionStream]] = {}  # green contexts live as long as the process


@dataclass
class StreamStep:
    """A step with what the stream executor adds: where it runs, what it waits for and records, which other
    streams use the buffer it creates."""

    step: Step
    stream: int | None  # stream id made current before the step; None keeps the current one (views, host ops)
    waits: tuple = ()  # event slots to wait on
    record: int | None = None  # event slot to record after the step
    shares: tuple = ()  # (value, stream ids) to record on the value's block after the step


@dataclass
class StreamPlan:
    steps: list
    num_events: int
    streams: list  # ids of the streams that run ops (forked and joined)


def plan_streams(program: Program) -> StreamPlan:
    """The static part of a multi-stream run of `program`: per-step streams, event waits and records, and the
    cross-stream buffer uses. Empty nano-ops (`fn` None) keep their waits and record their event: waiting for one
    means waiting for what precedes it on its stream and what it waited for."""
    waited = [w for s in program.steps for w in s.op.waits]
    slots = {w: i for i, w in enumerate(dict.fromkeys(waited))}
    home, users = _buffer_streams(program.steps)
    steps = []
    for s in program.steps:
        op = s.op
        shares = tuple((name, tuple(sorted(users[name] - {home[name]}))) for name in op.outputs
                       if name is not None and name in home and users[name] - {home[name]})
        stream = next((home[n] for n in op.outputs if n in home), None) if op.kind == "alloc" else op.stream
        steps.append(StreamStep(s, stream, tuple(slots[w] for w in op.waits), slots.get(op.id), shares))
    missing = set(slots) - {s.op.id for s in program.steps if s.op.stream is not None}
    if missing:
        raise ValueError(f"the plan waits for ops {sorted(missing)} that no stream runs")
    used = sorted({s.op.stream for s in program.steps if s.op.stream is not None})
    return StreamPlan(steps, len(slots), used)


def _buffer_streams(steps: list[Step]) -> tuple[dict[str, int], dict[str, set]]:
    """For every tensor a step creates: the stream it is allocated on (an op's result: the op's stream; an alloc:
    the stream of its first user) and every stream that reads or writes it, through views of it too."""
    root: dict[str, str] = {}
    home: dict[str, int] = {}
    users: dict[str, set] = {}
    allocs: set[str] = set()
    for s in steps:
        op = s.op
        outs = [n for n in op.outputs if n is not None]
        if op.kind == "view":
            base = next(iter(_refs(op.args)), None)
            for n in outs:
                root[n] = root.get(base, base) if base is not None else n
            continue
        if op.kind == "alloc":
            allocs.update(outs)
            for n in outs:
                users[n] = set()
            continue
        if op.stream is None or s.fn is None:
            continue
        for n in _refs(op.args) | _refs(op.kwargs.values()) | _refs(op.copy_to):
            r = root.get(n, n)
            if r in users:
                users[r].add(op.stream)
                if r in allocs and r not in home:
                    home[r] = op.stream
        for n in outs:
            home[n], users[n] = op.stream, {op.stream}
    return home, {n: u for n, u in users.items() if n in home}


def _refs(args) -> set[str]:
    found: set[str] = set()
    for a in args:
        if isinstance(a, Ref):
            found.add(a.value)
        elif isinstance(a, Seq):
            found |= _refs(a.items)
    return found


def partition_shares(streams: list[StreamSpec], granularity: int) -> dict[str, int]:
    """The streams' SM counts as `make_partitions` takes them, named by their first class; a count that is not a
    multiple of the granularity goes last (the driver hands out an odd remainder only as the last partition)."""
    ordered = sorted(streams, key=lambda s: (s.sms % granularity != 0, s.id))
    return {s.classes[0]: s.sms for s in ordered}


@register_executor
class StreamExecutor(SequentialExecutor):
    """The sequential executor's programs, issued on one stream per SM partition with events for the waits."""

    name: ClassVar[str] = "stream"

    def __init__(self, ir: ScheduleIR, constants: Mapping[str, torch.Tensor], **settings: Any):
        super().__init__(ir, constants, **settings)
        device = torch.device(settings.get("device") or "cuda")
        self.device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.device_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self.fallback_reason: str | None = None
        # per stream layout of the buckets: stream id -> partition (None: one stream with the whole device)
        self._parts = {_layout_key(b.streams): self._partitions_for(b.streams) for b in ir.buckets}
        self._streams = {k: None if p is None else {sid: part.stream for sid, part in p.items()}
                         for k, p in self._parts.items()}
        self._plans: dict[int, tuple] = {}

    @classmethod
    def unavailable(cls, device: torch.device, settings: Mapping[str, Any]) -> str | None:
        if device.type != "cuda":
            return f"it needs a CUDA device, the graph runs on {device.type}"
        if not torch.cuda.is_available():
            return "CUDA is not available"
        return None

    def __call__(self, args: Sequence[Any]) -> Any:
        program, env = self._bind(args)
        with torch.no_grad():
            streams = self._streams[_layout_key(program.bucket.streams)]
            if streams is None:  # one stream with every SM: the caller's own stream is that stream
                return run_program(program, env, self._fns(program))
            plan, fns, events = self._prepared(program)
            return run_streams(program, plan, fns, env, streams, events)

    def status(self) -> dict:
        """What the engine and benchmarks report: each layout's streams, SMs, and whether partitions are real."""
        layouts = [[{"stream": sid, "sms": sms, "partition": None if parts is None else
                     {"name": parts[sid].name, "disjoint": parts[sid].disjoint, "backend": parts[sid].backend}}
                    for sid, sms in key] for key, parts in self._parts.items()]
        return {"executor": self.name, "device_sms": self.device_sms, "layouts": layouts,
                "disjoint": self.fallback_reason is None, "fallback_reason": self.fallback_reason,
                **self.programs.fusion.status()}

    def _partitions_for(self, specs: list[StreamSpec]) -> dict | None:
        if len(specs) == 1 and specs[0].sms >= self.device_sms:
            return None
        shares = partition_shares(specs, partitions.sm_layout(self.device).granularity)
        key = (self.device.index, tuple(shares.items()))
        if key not in _PARTITIONS:
            with warnings.catch_warnings():  # its fallback warning is replaced by ours, given per executor
                warnings.simplefilter("ignore", RuntimeWarning)
                _PARTITIONS[key] = partitions.make_partitions(shares, self.device)
        parts = _PARTITIONS[key]
        fallback = next((p.fallback_reason for p in parts.values() if not p.disjoint), None)
        if fallback is not None and self.fallback_reason is None:
            self.fallback_reason = fallback
            note = (f"stream executor: SM partitions {shares} are plain streams sharing all SMs ({fallback}); "
                    "kernels bound their grids by their stream's SM count only")
            self.ir.provenance.notes.append(note)
            warnings.warn(f"nanoflow: {note}", RuntimeWarning, stacklevel=3)
        return {s.id: parts[s.classes[0]] for s in specs}

    def _prepared(self, program: Program) -> tuple:
        """The stream plan, routed operators and events of `program`, made on its first call."""
        cached = self._plans.get(id(program))
        if cached is not None and cached[0]() is program:
            return cached[1:]
        if len(self._plans) > 2 * self.programs.capacity:  # drop the plans of programs the cache let go
            self._plans = {k: v for k, v in self._plans.items() if v[0]() is not None}
        plan = plan_streams(program)
        sms = {s.id: s.sms for s in program.bucket.streams}
        invariant = batch_invariant(self.ir)
        fns = [routed(ps.step, sms.get(ps.stream), self.device_sms, invariant) for ps in plan.steps]
        events = [torch.cuda.Event() for _ in range(plan.num_events)]
        self._plans[id(program)] = (weakref.ref(program), plan, fns, events)
        return plan, fns, events


def _layout_key(streams: list[StreamSpec]) -> tuple:
    return tuple((s.id, s.sms) for s in streams)


def run_streams(program: Program, plan: StreamPlan, fns: list, env: dict, streams: dict, events: list) -> Any:
    """One call: fork the plan's streams from the current stream, issue every step, join them back."""
    caller = torch.cuda.current_stream()
    for sid in plan.streams:
        streams[sid].wait_stream(caller)
    current = caller
    try:
        for ps, fn in zip(plan.steps, fns):
            step = ps.step
            stream = current if ps.stream is None else streams[ps.stream]
            for e in ps.waits:
                stream.wait_event(events[e])
            if fn is None:  # an empty nano-op: its waits and its event still order the others
                if ps.record is not None:
                    events[ps.record].record(stream)
                continue
            if stream is not current:
                torch.cuda.set_stream(stream)
                current = stream
            step.store(fn(*step.args(env), **step.kwargs(env)), env)
            if ps.record is not None:
                events[ps.record].record(stream)
            for name, sids in ps.shares:
                for sid in sids:
                    env[name].record_stream(streams[sid])
            for name in step.free:
                env.pop(name, None)
        return program.outputs(env)
    finally:
        torch.cuda.set_stream(caller)
        for sid in plan.streams:
            caller.wait_stream(streams[sid])
