"""The fused LIGHT groups of a materialized program: each group the `fuse_light_ops` pass marked becomes one step.

A group is a run of LIGHT nano-ops of one stream and one nano-batch segment, consecutive in the issue order. Its
step reads the values the group takes from outside (narrowed as its ops narrow them), runs one inductor-compiled
callable (`fused_kernel`), writes only the destination slices that a later step reads (intermediates stay in
registers) and binds the named results later steps use. It keeps the union of its ops' waits and stands in for all
of them: a wait on any member becomes a wait on the group. The callable is compiled on the group's first call,
from that call's tensors, so that every executor sees the same code path; where inductor fails, the group's ops
run one by one, as they would unfused, and the executor warns once and reports it in `status()`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from ..ir import LIGHT, Const, NanoflowWarning, Op, Ref, ScheduleIR, Seq, Sym, compile_expr
from . import fused_kernel
from .fused_kernel import Call, CompileCounters, FusionCompileError, In, Items, Recipe, Res
from .program import Program, Step, _getter, const_value, persistent_names, returns_sequence
from .routing import batch_invariant

FUSED_TARGET = "nanoflow.fused_light"  # the target of a fused step's stand-in op (never stored in an IR)
_WARNED: set[str] = set()  # fallback reasons already warned about in this process


class FusionError(ValueError):
    """A group this runtime cannot fuse (the reason names the op); it runs unfused."""


@dataclass
class FusionStats:
    """What an executor reports about fusion: groups fused, fallbacks and compiles."""

    groups: int = 0  # fused steps made in materialized programs
    fallbacks: int = 0
    fallback_reason: str | None = None
    counters: CompileCounters = field(default_factory=CompileCounters)

    def fell_back(self, reason: str) -> None:
        self.fallbacks += 1
        self.fallback_reason = self.fallback_reason or reason
        if reason not in _WARNED:
            _WARNED.add(reason)
            warnings.warn(f"nanoflow: a group of LIGHT ops runs unfused ({reason})", NanoflowWarning, stacklevel=3)

    def status(self) -> dict:
        return {"fused_groups": self.groups, "fusion_fallback": self.fallback_reason,
                "fusion_fallbacks": self.fallbacks, "fusion_compiles": self.counters.compiles,
                "fusion_compile_s": round(self.counters.seconds, 3), "fusion_cache_hits": self.counters.cache_hits}


def functional_target(op: torch._ops.OpOverload) -> tuple[torch._ops.OpOverload, tuple[str, ...]] | None:
    """The functional overload that computes what `op` computes, and the names of `op`'s out= arguments (none for a
    functional op); None for an op that writes any argument other than keyword-only outs."""
    schema = op._schema
    writes = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if not writes:
        return op, ()
    if not all(a.kwarg_only for a in writes):
        return None
    outs = tuple(a.name for a in writes)
    inputs = [(a.name, str(a.type)) for a in schema.arguments if a.name not in outs]
    packet = getattr(getattr(torch.ops, op.namespace), op._opname)
    for name in packet.overloads():
        candidate = getattr(packet, name)
        args = candidate._schema.arguments
        if any(a.alias_info is not None and a.alias_info.is_write for a in args):
            continue
        if [(a.name, str(a.type)) for a in args] == inputs and len(candidate._schema.returns) == len(outs):
            return candidate, outs
    return None


def fuse_program(program: Program, ir: ScheduleIR, binding: dict, stats: FusionStats) -> None:
    """Replace each marked group of `program`'s steps by one fused step (in place)."""
    groups: dict[int, list[int]] = {}
    for i, step in enumerate(program.steps):
        if step.op.group is not None:
            groups.setdefault(step.op.group, []).append(i)
    if not groups:
        return
    keep = persistent_names(ir)
    roots = _roots(program.steps)
    readers = _readers(program.steps, roots)
    keep = {roots.get(n, n) for n in keep}
    invariant = batch_invariant(ir)
    fused: dict[int, tuple[int, Step]] = {}  # first index -> (last index, fused step)
    stand_in: dict[int, int] = {}
    for indices in groups.values():
        members = [program.steps[i] for i in indices]
        try:
            _check(members, indices)
            live = _Liveness(roots, readers, keep, indices[-1], binding)
            step = _fused_step(members, binding, roots, live, stats, invariant)
        except FusionError as e:
            stats.fell_back(str(e))
            continue
        fused[indices[0]] = (indices[-1], step)
        stand_in.update({m.op.id: step.op.id for m in members})
        stats.groups += 1
    steps: list[Step] = []
    i = 0
    while i < len(program.steps):
        last, step = fused.get(i, (i, program.steps[i]))
        if any(w in stand_in for w in step.op.waits):
            step.op = replace(step.op, waits=sorted({stand_in.get(w, w) for w in step.op.waits}))
        steps.append(step)
        i = last + 1
    program.steps = steps


def _check(members: list[Step], indices: list[int]) -> None:
    first = members[0].op
    if indices != list(range(indices[0], indices[-1] + 1)):
        raise FusionError(f"group {first.group} is not consecutive in the issue order")
    for m in members:
        if m.op.kind != "compute" or m.op.stream != first.stream or m.span != members[0].span:
            raise FusionError(f"group {first.group} mixes streams, segments or host ops ({m.op.node})")
        if m.fn is not None and functional_target(m.fn) is None:
            raise FusionError(f"{m.op.target} ({m.op.node}) writes one of its inputs")


class _Liveness:
    """Whether a value a group writes is read after the group (or is a graph input, constant or output)."""

    def __init__(self, roots: dict, readers: dict, keep: set, last: int, binding: dict):
        self.roots, self.readers, self.keep, self.last, self.binding = roots, readers, keep, last, binding

    def __call__(self, ref: Ref, span: tuple | None) -> bool:
        root = self.roots.get(ref.value, ref.value)
        if root in self.keep:
            return True
        rows = self._rows(ref, span)
        for index, other, other_span in self.readers.get(root, ()):
            if index <= self.last:
                continue
            if other.value != ref.value or other.dim != ref.dim or rows is None:
                return True
            theirs = self._rows(other, other_span)
            if theirs is None or (theirs[0] < rows[1] and rows[0] < theirs[1]):
                return True
        return False

    def _rows(self, ref: Ref, span: tuple | None) -> tuple | None:
        if ref.dim is None or span is None:
            return None
        factor = compile_expr(ref.factor)(self.binding)
        return span[0] * factor, span[1] * factor


def _fused_step(members: list[Step], binding: dict, roots: dict, live: _Liveness, stats: FusionStats,
                invariant: bool) -> Step:
    first, last = members[0].op, members[-1].op
    refs = tuple(r for m in members for r in _all_refs(m.op))
    waits = sorted({w for m in members for w in m.op.waits})
    outputs = [n for m in members for n in m.op.outputs if n is not None]
    op = Op(last.id, f"{first.node}..{last.node}", FUSED_TARGET, "compute", LIGHT, args=[Seq(refs)],
            outputs=outputs, seg=first.seg, stream=first.stream, waits=waits, group=first.group)
    free = tuple(n for m in members for n in m.free)
    if members[0].fn is None:  # an empty segment: nothing runs, its place and waits stay
        return Step(op, None, lambda env: (), lambda env: {}, (), False, (), members[0].span, free)
    group = FusedGroup(members, *_recipe(members, binding, roots, live), stats, invariant)
    return Step(op, group, lambda env: (env,), lambda env: {}, (), False, (), members[0].span, free)


def _recipe(members: list[Step], binding: dict, roots: dict, live: _Liveness) -> tuple:
    """The group as a Recipe, the getters of its inputs and destinations, and the names of what it returns."""
    span = members[0].span
    inputs: dict[Ref, int] = {}
    written: dict[Ref, Res] = {}  # what earlier members wrote, exactly as later members read it
    written_roots: set[str] = set()
    read_roots: set[str] = set()
    calls, stores, returns, dests, names = [], [], [], [], []

    def template(arg: Any) -> Any:
        if isinstance(arg, Ref):
            if arg in written:
                return written[arg]
            root = roots.get(arg.value, arg.value)
            if root in written_roots:
                raise FusionError(f"{arg.value} is read through another view than the group wrote it")
            read_roots.add(root)
            return In(inputs.setdefault(arg, len(inputs)))
        if isinstance(arg, Seq):
            return Items(tuple(template(a) for a in arg.items), arg.tuple)
        if isinstance(arg, Sym):
            return compile_expr(arg.expr)(binding)
        if isinstance(arg, Const):
            return const_value(arg)
        return arg

    for j, m in enumerate(members):
        op = m.op
        functional, outs = functional_target(m.fn)
        args = tuple(template(a) for a in op.args)
        kwargs = tuple((k, template(a)) for k, a in op.kwargs.items() if k not in outs)
        elems = len(outs) or max(len(op.outputs), len(op.copy_to), 1)
        calls.append(Call(functional, args, kwargs, elems if returns_sequence(functional) else 1))
        targets = [(op.kwargs[name], e) for e, name in enumerate(outs)] + \
                  [(ref, e) for e, ref in enumerate(op.copy_to) if ref is not None]
        for ref, e in targets:
            root = roots.get(ref.value, ref.value)
            if root in read_roots or root in written_roots:
                raise FusionError(f"{op.node} overwrites {ref.value}, which the group already reads or writes")
            written[ref] = Res(j, e)
            if live(ref, span):
                stores.append(Res(j, e))
                dests.append(_getter(ref, span, binding))
        for e, name in enumerate(op.outputs):
            if name is not None:
                written[Ref(name)] = Res(j, e)
                if live(Ref(name), None):
                    returns.append(Res(j, e))
                    names.append(name)
        written_roots.update(roots.get(r.value, r.value) for r, _ in targets)
        written_roots.update(n for n in op.outputs if n is not None)
    recipe = Recipe(tuple(calls), len(inputs), tuple(stores), tuple(returns))
    getters = [_getter(ref, span, binding) for ref in inputs] + dests
    return recipe, getters, names


class FusedGroup:
    """A fused step's callable: compiled on the first call from that call's tensors (the same sizes at every call
    of one program); recompiled only if a host scalar it baked in changes; unfused where inductor fails."""

    def __init__(self, members: list[Step], recipe: Recipe, getters: list, names: list, stats: FusionStats,
                 invariant: bool = False):
        self.members, self.recipe, self.getters, self.names, self.stats = members, recipe, getters, names, stats
        self.invariant = invariant  # inductor's batch-invariant mode (the `batch_invariant` compile option)
        self.fn: Callable | None = None
        self.unfused = False
        self._scalars: tuple = ()
        self._scalar_at: list[int] = []

    def __call__(self, env: dict) -> None:
        if self.unfused:
            return self._run_unfused(env)
        values = [g(env) for g in self.getters]
        if self.fn is None or tuple(values[i] for i in self._scalar_at) != self._scalars:
            self._prepare(values)
            if self.unfused:
                return self._run_unfused(env)
            try:  # the first run of a fresh callable may still fail (a kernel that does not launch)
                results = self.fn(values)
            except Exception as e:  # noqa: BLE001 - the unfused ops rewrite everything it may have written
                fused_kernel.mark_failed(self.recipe, values, fused_kernel.describe(e), self.invariant)
                self._fall_back(fused_kernel.describe(e))
                return self._run_unfused(env)
        else:
            results = self.fn(values)
        for name, value in zip(self.names, results):
            env[name] = value

    def _prepare(self, values: list) -> None:
        self._scalar_at = [i for i, v in enumerate(values) if not isinstance(v, torch.Tensor)]
        self._scalars = tuple(values[i] for i in self._scalar_at)
        try:
            self.fn = fused_kernel.compiled(self.recipe, values, self.stats.counters, self.invariant)
        except FusionCompileError as e:
            self._fall_back(str(e))

    def _fall_back(self, reason: str) -> None:
        self.unfused = True
        self.stats.fell_back(f"inductor failed on {self.members[0].op.node}..{self.members[-1].op.node}: {reason}")

    def _run_unfused(self, env: dict) -> None:
        for m in self.members:
            m.store(m.fn(*m.args(env), **m.kwargs(env)), env)


def _all_refs(op: Op) -> list[Ref]:
    found: list[Ref] = []

    def walk(arg: Any) -> None:
        if isinstance(arg, Ref):
            found.append(arg)
        elif isinstance(arg, Seq):
            for a in arg.items:
                walk(a)

    for a in [*op.args, *op.kwargs.values(), *op.copy_to]:
        walk(a)
    return found


def _roots(steps: list[Step]) -> dict[str, str]:
    """The storage owner of every view a step makes (views of views included)."""
    roots: dict[str, str] = {}
    for step in steps:
        if step.op.kind == "view":
            base = next(iter(_all_refs(step.op)), None)
            for name in step.op.outputs:
                if name is not None and base is not None:
                    roots[name] = roots.get(base.value, base.value)
    return roots


def _readers(steps: list[Step], roots: dict) -> dict[str, list]:
    """root -> (step index, Ref, span) of every reference a step with work to do makes to it."""
    readers: dict[str, list] = {}
    for i, step in enumerate(steps):
        if step.fn is None and step.op.kind == "compute":
            continue
        for ref in _all_refs(step.op):
            readers.setdefault(roots.get(ref.value, ref.value), []).append((i, ref, step.span))
    return readers
