"""A group of LIGHT nano-ops as one inductor-compiled callable, built without Dynamo.

The executors run inside the code Dynamo compiled, where a nested `torch.compile` would be skipped, so a group's
ATen ops go to inductor directly: `compile_fx` on an FX graph built here from a `Recipe`. Inductor fuses the
pointwise ops and row reductions into a few kernels (Triton on CUDA, C++ on CPU) that launch on the current stream
and can be captured in a CUDA graph. Results the rest of the program reads are `copy_`-ed into their destination
slices, which inductor turns into the kernel's own store, so the group's intermediates never reach memory.

Compiled callables are shared process-wide, keyed by the recipe and the sizes, strides, dtypes and alignment of the
example inputs, so the identical layers of a model compile once per nano-batch size.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

ALIGNMENT = 16  # bytes; inductor copies inputs that are less aligned than its example was


@dataclass(frozen=True)
class In:
    """The recipe's `index`-th input (a tensor placeholder, or a host scalar baked into the graph)."""

    index: int


@dataclass(frozen=True)
class Res:
    """Element `elem` of the result of the recipe's `call`-th call."""

    call: int
    elem: int = 0


@dataclass(frozen=True)
class Items:
    items: tuple
    is_tuple: bool = False


@dataclass(frozen=True)
class Call:
    op: Any  # a functional OpOverload
    args: tuple
    kwargs: tuple  # (name, template) pairs
    elems: int  # results it returns: 1 for a plain tensor, else the length of its tuple or list


@dataclass(frozen=True)
class Recipe:
    """Calls over inputs [0, num_inputs) and earlier results; `stores[i]` is copied into input num_inputs + i (a
    destination slice); `returns` are handed back (values the program binds by name)."""

    calls: tuple
    num_inputs: int
    stores: tuple
    returns: tuple


@dataclass
class CompileCounters:
    compiles: int = 0
    seconds: float = 0.0
    cache_hits: int = 0


PROCESS = CompileCounters()  # every compile of this process, whichever executor asked
_CACHE: dict[tuple, Callable | str] = {}  # key -> compiled callable, or why compiling it failed


class FusionCompileError(RuntimeError):
    """Inductor could not compile a group (the message says why); the group runs unfused."""


def compiled(recipe: Recipe, examples: list, counters: CompileCounters,
             invariant: bool = False) -> Callable[[list], list]:
    """The callable for `recipe` on inputs like `examples` (inputs then destinations): takes the same list, writes
    the destinations and returns the `returns` values; `invariant`: in inductor's batch-invariant mode (a row's
    reductions in one order whatever the row count). Raises FusionCompileError where inductor fails."""
    key = (recipe, tuple(_meta(x) for x in examples), invariant)
    found = _CACHE.get(key)
    if found is None:
        start = time.perf_counter()
        try:
            found = _compile(recipe, examples, invariant)
        except Exception as e:  # noqa: BLE001 - any inductor failure means: run this group unfused
            found = describe(e)
        seconds = time.perf_counter() - start
        for c in (counters, PROCESS):
            c.compiles += 1
            c.seconds += seconds
        _CACHE[key] = found
    else:
        counters.cache_hits += 1
        PROCESS.cache_hits += 1
    if isinstance(found, str):
        raise FusionCompileError(found)
    return found


def mark_failed(recipe: Recipe, examples: list, reason: str, invariant: bool = False) -> None:
    """Remember that the callable for these inputs failed when it first ran, so that no other group uses it."""
    _CACHE[(recipe, tuple(_meta(x) for x in examples), invariant)] = reason


def _meta(x: Any) -> tuple:
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.data_ptr() % ALIGNMENT == 0)
    return ("scalar", type(x), x)  # baked into the graph: another value is another graph


def describe(error: Exception) -> str:
    """The exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _compile(recipe: Recipe, examples: list, invariant: bool) -> Callable[[list], list]:
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    tensors = [i for i, x in enumerate(examples) if isinstance(x, torch.Tensor)]
    gm = build_graph(recipe, examples)
    patches = {"triton.cudagraphs": False, "cpp.threads": 1}
    if invariant:
        if not hasattr(config, "batch_invariant"):  # the group then runs unfused, and says why
            raise FusionCompileError(f"torch {torch.__version__}'s inductor has no batch_invariant mode")
        patches["batch_invariant"] = True
    fn = compile_fx(gm, [examples[i] for i in tensors], config_patches=patches)

    def call(inputs: list) -> list:
        return fn(*[inputs[i] for i in tensors])

    return call


def build_graph(recipe: Recipe, examples: list) -> fx.GraphModule:
    """The recipe as an FX graph of ATen ops: tensor inputs are placeholders, host scalars constants."""
    graph = fx.Graph()
    leaves = [graph.placeholder(f"in{i}") if isinstance(x, torch.Tensor) else x for i, x in enumerate(examples)]
    results: list[list] = []

    def build(t: Any) -> Any:
        if isinstance(t, In):
            return leaves[t.index]
        if isinstance(t, Res):
            return results[t.call][t.elem]
        if isinstance(t, Items):
            items = [build(v) for v in t.items]
            return tuple(items) if t.is_tuple else items
        return t

    for c in recipe.calls:
        node = graph.call_function(c.op, tuple(build(a) for a in c.args), {k: build(v) for k, v in c.kwargs})
        sequence = len(c.op._schema.returns) > 1 or isinstance(c.op._schema.returns[0].type, torch.ListType)
        results.append([graph.call_function(operator.getitem, (node, e)) for e in range(c.elems)]
                       if sequence else [node])
    for i, res in enumerate(recipe.stores):
        graph.call_function(torch.ops.aten.copy_.default, (leaves[recipe.num_inputs + i], build(res)))
    graph.output(tuple(build(r) for r in recipe.returns))
    return fx.GraphModule(torch.nn.Module(), graph)
