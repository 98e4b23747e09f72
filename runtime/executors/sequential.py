"""The reference executor: runs a bucket plan's ops one after another in issue order, on any device.

Streams and waits are ignored (issue order is a topological order of the plan), so the results are what the
multi-stream executors must reproduce. Per call it only reads the sizes, looks up the concrete program for them
and walks its steps.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..ir import ScheduleIR
from .base import ProgramCache, register_executor
from .program import Program


@register_executor
class SequentialExecutor:
    name: ClassVar[str] = "sequential"

    def __init__(self, ir: ScheduleIR, constants: Mapping[str, torch.Tensor], **settings: Any):
        self.ir = ir
        self.constants = dict(constants)
        self.programs = ProgramCache(ir)
        self._input_names = [i.name for i in ir.signature.inputs]

    @classmethod
    def unavailable(cls, device: torch.device, settings: Mapping[str, Any]) -> str | None:
        return None

    def __call__(self, args: Sequence[Any]) -> Any:
        program, env = self._bind(args)
        with torch.no_grad():
            return run_program(program, env)

    def status(self) -> dict:
        """What the engine and benchmarks report: fused LIGHT groups, fusion fallbacks and compile time."""
        return {"executor": self.name, **self.programs.fusion.status()}

    def _bind(self, args: Sequence[Any]) -> tuple[Program, dict]:
        """The program for these sizes, and the environment its steps read: constants plus this call's inputs."""
        env = dict(self.constants)
        env.update(zip(self._input_names, args))
        return self.programs.get(args), env


def run_program(program: Program, env: dict) -> Any:
    for step in program.steps:
        if step.fn is None:  # an empty nano-op
            continue
        step.store(step.fn(*step.args(env), **step.kwargs(env)), env)
        for name in step.free:
            env.pop(name, None)
    return program.outputs(env)
