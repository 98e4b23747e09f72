"""The executor protocol and registry: how a Schedule IR becomes a callable, and how executors plug in.

An executor is built from the IR and the graph's constants, and called with the graph's positional inputs
(parameters included, as Dynamo passes them); it returns the graph's outputs. Executors that need a device
(streams, CUDA graphs) register with `register_executor` and say when they cannot run; `select_executor`
turns the `executor` option into a class, falling back to the sequential reference with a recorded reason.

What a multi-stream executor does with a `Program` (see program.py): walk `steps` in order (the issue order, a
topological order); a step whose `op.stream` is None runs on the host at once (allocations, views, scalars);
any other step is launched on its stream after waiting for the events of the ops in `op.waits` (record an event
after each op that a later op waits on). Steps with `fn` None (nano-ops left empty at this token count) launch
nothing but keep their waits and their place in the stream. All streams first wait for the caller's stream, and
the caller's stream waits for all of them at the end; a buffer allocated on the host and written on another
stream needs `record_stream` (or allocation on that stream) before the caching allocator may reuse it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import torch

from ..ir import ScheduleIR
from .fusion import FusionStats, fuse_program
from .program import Program, materialize, symbol_getters

EXECUTOR_NAMES = ("sequential", "stream", "graph", "auto")
PREFERENCE = ("graph", "stream", "sequential")  # what "auto" tries, best first


class Executor(Protocol):
    name: ClassVar[str]

    def __init__(self, ir: ScheduleIR, constants: Mapping[str, torch.Tensor], **settings: Any) -> None: ...

    def __call__(self, args: Sequence[Any]) -> Any: ...

    @classmethod
    def unavailable(cls, device: torch.device, settings: Mapping[str, Any]) -> str | None:
        """Why this executor cannot run on `device` (None if it can)."""
        ...


_REGISTRY: dict[str, type] = {}


def register_executor(cls: type) -> type:
    """Class decorator: make `cls` selectable as options['executor'] = cls.name."""
    if cls.name not in EXECUTOR_NAMES or cls.name == "auto":
        raise ValueError(f"executor name {cls.name!r} must be one of {EXECUTOR_NAMES[:-1]}")
    _REGISTRY[cls.name] = cls
    return cls


def select_executor(requested: str, device: torch.device, settings: Mapping[str, Any]) -> tuple[type, str | None]:
    """The executor class for `requested` on `device`, and why it is not the one requested (None if it is)."""
    from . import graph, sequential, stream  # noqa: F401  (register the executors)

    if requested == "auto":
        for name in PREFERENCE:
            cls = _REGISTRY.get(name)
            if cls is not None and cls.unavailable(device, settings) is None:
                return cls, None
    cls = _REGISTRY.get(requested)
    reason = f"the {requested!r} executor is not available yet" if cls is None else cls.unavailable(device, settings)
    if reason is None:
        return cls, None
    return _REGISTRY["sequential"], f"executor {requested!r} cannot run here ({reason}); using 'sequential'"


class ProgramCache:
    """Concrete programs per binding of the plan's symbols (token count and other sizes), least recently used out;
    each with its marked LIGHT groups fused (`fusion.py`)."""

    def __init__(self, ir: ScheduleIR, capacity: int = 64):
        self.ir = ir
        self.capacity = capacity
        self.fusion = FusionStats()
        self._getters = symbol_getters(ir)
        self._programs: OrderedDict[tuple, Program] = OrderedDict()

    def get(self, args: Sequence[Any]) -> Program:
        key = tuple(get(args) for _, get in self._getters)
        program = self._programs.get(key)
        if program is None:
            binding = {name: value for (name, _), value in zip(self._getters, key)}
            program = materialize(self.ir, binding)
            fuse_program(program, self.ir, binding, self.fusion)
            self._programs[key] = program
            if len(self._programs) > self.capacity:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(key)
        return program



_LAST_RUN: list = [None]  # a weak reference to the schedule that ran last


class CompiledSchedule:
    """What the backend hands Dynamo: a Schedule IR bound to an executor, called with the graph's inputs.

    Dynamo hides the backend's callable; the last one called is found with `take_last_run`, which is how the engine
    reports its executor's counters (graph captures, replays) and reads its attention cuts."""

    def __init__(self, ir: ScheduleIR, executor: Executor):
        self.ir = ir
        self.executor = executor
        self._ref = weakref.ref(self)

    def status(self) -> dict:
        status = getattr(self.executor, "status", None)
        return status() if status is not None else {"executor": self.executor.name}

    def __call__(self, *args: Any) -> Any:
        _LAST_RUN[0] = self._ref
        return self.executor(args)


def bind(ir: ScheduleIR, constants: Mapping[str, torch.Tensor], requested: str, device: torch.device,
         settings: Mapping[str, Any]) -> tuple[CompiledSchedule, str | None]:
    """Bind `ir` to the executor `requested` (or the best for "auto"); records the choice in the IR's provenance
    and returns why it differs from the request, if it does."""
    cls, reason = select_executor(requested, device, settings)
    ir.provenance.executor = cls.name
    if reason is not None:
        ir.provenance.notes.append(reason)
    return CompiledSchedule(ir, cls(ir, constants, **{"device": device, **settings})), reason


def take_last_run() -> CompiledSchedule | None:
    """The schedule that ran last (if still alive), forgotten once taken: how a caller learns which schedule served
    its call, also when Dynamo reused a graph compiled for another model instance of the same shapes."""
    ref, _LAST_RUN[0] = _LAST_RUN[0], None
    return ref() if ref is not None else None
