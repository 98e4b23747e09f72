"""The reference executor: runs a bucket plan's ops one after another in issue order, on any device.

Streams and waits are ignored (issue order is a topological order of the plan), so the results are what the
multi-stream executors must reproduce. Per call it only reads the sizes, looks up the concrete program for them
and walks its steps.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..ir import ScheduleIR
from .base import ProgramCache, register_executor
from .program import Program
from .routing import batch_invariant, routed


@register_executor
class SequentialExecutor:
    name: ClassVar[str] = "sequential"

    def __init__(self, ir: ScheduleIR, constants: Mapping[str, torch.Tensor], **settings: Any):
        self.ir = ir
        self.constants = dict(constants)
        self.programs = ProgramCache(ir)
        self._input_names = [i.name for i in ir.signature.inputs]
        device = torch.device(settings.get("device") or "cpu")
        # batch-invariant kernels on CUDA (see routing.py), so that this reference computes what the others do
        self._invariant_sms = (torch.cuda.get_device_properties(device).multi_processor_count
                               if device.type == "cuda" and batch_invariant(ir) else None)
        self._routed: dict[int, tuple] = {}

    @classmethod
    def unavailable(cls, device: torch.device, settings: Mapping[str, Any]) -> str | None:
        return None

    def __call__(self, args: Sequence[Any]) -> Any:
        program, env = self._bind(args)
        with torch.no_grad():
            return run_program(program, env, self._fns(program))

    def status(self) -> dict:
        """What the engine and benchmarks report: fused LIGHT groups, fusion fallbacks and compile time."""
        return {"executor": self.name, **self.programs.fusion.status()}

    def _fns(self, program: Program) -> list | None:
        """The routed callables of `program`'s steps (None: each step's own), made on its first call."""
        if self._invariant_sms is None:
            return None
        cached = self._routed.get(id(program))
        if cached is None or cached[0]() is not program:
            fns = [routed(s, None, self._invariant_sms, True) for s in program.steps]
            self._routed = {k: v for k, v in self._routed.items() if v[0]() is not None}
            cached = self._routed[id(program)] = (weakref.ref(program), fns)
        return cached[1]

    def _bind(self, args: Sequence[Any]) -> tuple[Program, dict]:
        """The program for these sizes, and the environment its steps read: constants plus this call's inputs."""
        env = dict(self.constants)
        env.update(zip(self._input_names, args))
        return self.programs.get(args), env


def run_program(program: Program, env: dict, fns: list | None = None) -> Any:
    """Every step in issue order; `fns` (one per step) replaces the steps' own callables (routed kernels)."""
    for step, fn in zip(program.steps, fns or [s.fn for s in program.steps]):
        if fn is None:  # an empty nano-op
            continue
        step.store(fn(*step.args(env), **step.kwargs(env)), env)
        for name in step.free:
            env.pop(name, None)
    return program.outputs(env)
