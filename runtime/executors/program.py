"""A bucket plan of the Schedule IR made concrete for one binding of its symbols: what every executor runs.

Materialising resolves everything that does not change between calls with the same sizes (operators, symbolic
sizes, narrowing offsets, empty nano-ops, when each temporary can be dropped), so that a call only walks the steps.
Cut points of the nearest bucket scale to the actual token count; a nano-op whose range becomes empty is skipped,
which keeps every dependency of the plan valid for any count.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..ir import TOKEN_SYMBOL, BucketPlan, Const, Op, Ref, ScheduleIR, Seq, Sym, compile_expr

Getter = Callable[[dict], Any]

_PY_MODULES = {"operator": operator, "math": math, "torch": torch}


@dataclass
class Step:
    """One op made concrete. `fn` is None for a nano-op whose token range is empty at this token count: it runs
    nothing, but a multi-stream executor must still honour its place in its stream and its waits, since the
    plan's minimal waits rely on them."""

    op: Op
    fn: Callable | None
    args: Getter  # env -> tuple
    kwargs: Getter  # env -> dict
    outputs: tuple  # value names bound from the result; None drops that element
    unpack: bool  # the operator returns a sequence
    copy_to: tuple  # per result element: a getter of the destination slice, or None
    span: tuple[int, int] | None  # concrete token range
    free: tuple = ()  # names no later step reads

    def store(self, result: Any, env: dict) -> None:
        """Copy the result into its destination slices and bind its named outputs (every executor does this)."""
        parts = result if self.unpack else (result,)
        for part, dst in zip(parts, self.copy_to):
            if dst is not None:
                dst(env).copy_(part)
        if self.unpack:
            for name, part in zip(self.outputs, result):
                if name is not None:
                    env[name] = part
        elif self.outputs and self.outputs[0] is not None:
            env[self.outputs[0]] = result


@dataclass
class Program:
    bucket: BucketPlan
    tokens: int
    cuts: list[int]
    steps: list[Step]
    outputs: Getter


def resolve_target(name: str) -> Callable:
    """'aten.mm.out' -> torch.ops.aten.mm.out; 'py:operator.mul' -> operator.mul (operator, math, torch.sym_*)."""
    if name.startswith("py:"):
        module, _, attr = name[3:].rpartition(".")
        if module not in _PY_MODULES or (module == "torch" and "sym" not in attr):
            raise ValueError(f"IR target {name!r} is not an allowed Python function")
        return getattr(_PY_MODULES[module], attr)
    try:
        namespace, op, overload = name.split(".")
        return getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (ValueError, AttributeError, RuntimeError):
        raise ValueError(f"IR target {name!r} is not a registered operator overload") from None


def returns_sequence(fn: Callable) -> bool:
    schema = getattr(fn, "_schema", None)
    if schema is None:
        return False
    return len(schema.returns) > 1 or (len(schema.returns) == 1 and isinstance(schema.returns[0].type, torch.ListType))


def symbol_getters(ir: ScheduleIR) -> list[tuple[str, Callable[[Sequence], int]]]:
    """How to read each symbol off the positional inputs of a call; a symbol read from several inputs (the
    token count of every token input) must agree across them."""
    def read(args: Sequence, index: int, dim: int | None) -> int:
        return int(args[index]) if dim is None else args[index].shape[dim]

    def getter(name: str, sources: list) -> Callable[[Sequence], int]:
        (index, dim), rest = sources[0], sources[1:]
        if not rest:
            return lambda args: read(args, index, dim)

        def checked(args: Sequence) -> int:
            value = read(args, index, dim)
            for i, d in rest:
                if read(args, i, d) != value:
                    names = [ir.signature.inputs[j].name for j, _ in sources]
                    raise ValueError(f"inputs {', '.join(names)} must have the same size {name} "
                                     f"(got {value} and {read(args, i, d)})")
            return value

        return checked

    return [(name, getter(name, sources)) for name, sources in ir.symbols.items()]


def scale_cuts(cuts: list[int], tokens: int) -> list[int]:
    """The bucket's cut points scaled to `tokens`, keeping their order (equal cuts give empty nano-ops)."""
    if cuts[-1] == tokens:
        return list(cuts)
    scaled = [int(c * tokens / cuts[-1] + 0.5) for c in cuts]
    scaled[0], scaled[-1] = 0, tokens
    return scaled


def class_cuts(ir: ScheduleIR, tokens: int, cls: str) -> list[int]:
    """Where the nano-batches of op class `cls` begin and end at `tokens` tokens: [0, ..., tokens], from the bucket
    plan `materialize` picks for that count, scaled as it scales them. One nano-batch if the class is not split."""
    bucket = ir.bucket(tokens)
    cuts = [0]
    for size in bucket.nano_batches.get(cls) or [bucket.tokens]:
        cuts.append(cuts[-1] + size)
    return scale_cuts(cuts, tokens)


def materialize(ir: ScheduleIR, binding: dict[str, int]) -> Program:
    tokens = binding[TOKEN_SYMBOL] if TOKEN_SYMBOL in binding else ir.signature.tokens_static
    bucket = ir.bucket(tokens)
    cuts = scale_cuts(bucket.cuts, tokens)
    steps = []
    for op in bucket.ops:
        span = None if op.seg is None else (cuts[op.seg[0]], cuts[op.seg[1]])
        if span is not None and span[0] == span[1]:  # kept: its stream order and waits still order others
            steps.append(Step(op, None, _tuple_getter([]), _dict_getter({}), (), False, (), span))
            continue
        fn = resolve_target(op.target)
        args = _tuple_getter([_getter(a, span, binding) for a in op.args])
        kwargs = _dict_getter({k: _getter(a, span, binding) for k, a in op.kwargs.items()})
        copy_to = tuple(None if r is None else _getter(r, span, binding) for r in op.copy_to)
        steps.append(Step(op, fn, args, kwargs, tuple(op.outputs), returns_sequence(fn), copy_to, span))
    keep = persistent_names(ir)
    _plan_frees(steps, keep)
    return Program(bucket, tokens, cuts, steps, _getter(ir.outputs, None, binding))


def persistent_names(ir: ScheduleIR) -> set[str]:
    """Values that outlive any step: the graph's inputs, its constants and what it returns."""
    return {i.name for i in ir.signature.inputs} | {c.name for c in ir.constants} | _refs(ir.outputs)


def _refs(arg: Any) -> set[str]:
    if isinstance(arg, Ref):
        return {arg.value}
    if isinstance(arg, Seq):
        return set().union(*(_refs(a) for a in arg.items)) if arg.items else set()
    return set()


def _plan_frees(steps: list[Step], keep: set[str]) -> None:
    """Drop each temporary right after its last reader, as eager would, so peak memory stays eager-like."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        op = step.op
        if step.fn is None:
            continue
        for name in set().union(*map(_refs, op.args), *map(_refs, op.kwargs.values()), *map(_refs, op.copy_to)):
            last[name] = i
        for name in op.outputs:
            if name is not None:
                last.setdefault(name, i)
    frees: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    for i, names in frees.items():
        steps[i].free = tuple(names)


def _getter(arg: Any, span: tuple[int, int] | None, binding: dict[str, int]) -> Getter:
    if isinstance(arg, Ref):
        name = arg.value
        if arg.dim is None or span is None:
            return lambda env: env[name]
        factor = compile_expr(arg.factor)(binding)
        dim, start, length = arg.dim, span[0] * factor, (span[1] - span[0]) * factor
        return lambda env: env[name].narrow(dim, start, length)
    if isinstance(arg, Sym):
        value = compile_expr(arg.expr)(binding)
        return lambda env: value
    if isinstance(arg, Const):
        value = const_value(arg)
        return lambda env: value
    if isinstance(arg, Seq):
        items = [_getter(a, span, binding) for a in arg.items]
        if arg.tuple:
            return lambda env: tuple(g(env) for g in items)
        return lambda env: [g(env) for g in items]
    if arg is None:
        return lambda env: None
    raise TypeError(f"not an IR argument: {arg!r}")


def const_value(arg: Const) -> Any:
    if arg.type == "py" or arg.type == "float":
        return arg.value
    if arg.type == "device":
        return torch.device(arg.value)
    if arg.type in ("dtype", "layout", "memory_format"):
        value = getattr(torch, arg.value, None)
        if value is None:
            raise ValueError(f"unknown torch {arg.type} {arg.value!r} in the IR")
        return value
    raise ValueError(f"unknown constant type {arg.type!r} in the IR")


def _tuple_getter(items: list[Getter]) -> Getter:
    if not items:
        return lambda env: ()
    if len(items) == 1:
        (a,) = items
        return lambda env: (a(env),)
    if len(items) == 2:
        a, b = items
        return lambda env: (a(env), b(env))
    return lambda env: tuple(g(env) for g in items)


def _dict_getter(items: dict[str, Getter]) -> Getter:
    if not items:
        return lambda env: {}
    pairs = list(items.items())
    return lambda env: {k: g(env) for k, g in pairs}
