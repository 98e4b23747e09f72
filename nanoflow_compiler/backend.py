"""The `nanoflow` torch.compile backend: Dynamo graph -> ATen graph -> passes -> Schedule IR -> executor.

Registered through the `torch_dynamo_backends` entry point, so `torch.compile(m, backend="nanoflow", options=...)`
works without importing this package. Lowering traces Dynamo's graph to ATen with make_fx under Dynamo's own fake
mode (the mode of the placeholders' example values), without autograd and without functionalization, so that the
in-place `nanoflow::kv_append`, `nanoflow::paged_attention` and the GEMMs stay single nodes. With dynamic shapes the
token count is a symbol, renamed `T`. A failure inside the passes (a bug, or an op we cannot express) falls back to
running Dynamo's graph as is, with a warning: results never change.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import fx

from .options import CompileOptions, NanoflowOptionsError
from .passes.context import InputInfo, NanoflowWarning, PassContext
from .passes.pipeline import run_pipeline
from .passes.symbolic import TOKEN, to_expr
from .runtime.partitions import PartitionError

_CAPTURES: list[list] = []


def nanoflow(gm: fx.GraphModule, example_inputs: list, options: dict | CompileOptions | None = None) -> Callable:
    """The backend entry point Dynamo calls once per graph."""
    compiled = compile_graph(gm, example_inputs, CompileOptions.from_dict(options))
    for captured in _CAPTURES:
        captured.append(compiled)
    return compiled


@contextlib.contextmanager
def capture() -> Iterator[list]:
    """Collect what the backend compiles inside the block (the CompiledSchedule objects, with their `.ir`)."""
    compiled: list = []
    _CAPTURES.append(compiled)
    try:
        yield compiled
    finally:
        _CAPTURES.remove(compiled)


class EagerFallback:
    """Dynamo's graph, run as traced, when the passes could not compile it; `reason` says why."""

    def __init__(self, gm: fx.GraphModule, reason: str):
        self.gm, self.reason, self.ir = gm, reason, None

    def __call__(self, *args: Any) -> Any:
        return self.gm(*args)


def compile_graph(gm: fx.GraphModule, example_inputs: list, options: CompileOptions, until: str | None = None):
    """Lower and run the passes; returns the callable (or, with `until`, the PassContext after that pass)."""
    if options.schedule is not None and until is None:  # an exported artifact's schedule: no passes, no search
        from .artifact.schedule import bind_stored

        return bind_stored(gm, example_inputs, options)
    aten, ctx = lower(gm, example_inputs, options)
    try:
        run_pipeline(aten, ctx, until)
    except (NanoflowOptionsError, PartitionError):  # the user's configuration: a clear error, not a fallback
        raise
    except Exception as e:  # noqa: BLE001 - any failure of ours must not change what the model computes
        reason = f"the nanoflow passes failed ({type(e).__name__}: {e}); running the graph unsplit as traced"
        warnings.warn(f"nanoflow: {reason}", NanoflowWarning, stacklevel=2)
        return EagerFallback(gm, reason)
    return ctx if until is not None else ctx.module


def lower(gm: fx.GraphModule, example_inputs: list, options: CompileOptions) -> tuple[fx.GraphModule, PassContext]:
    from torch._dispatch.python import enable_python_dispatcher
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.experimental.proxy_tensor import make_fx

    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    fakes = [p.meta["example_value"] for p in placeholders]
    # the placeholders' fake values belong to Dynamo's own mode (the tracing context holds a fresh one for backends)
    fake_mode = next((v.fake_mode for v in fakes if isinstance(v, FakeTensor)), None)
    fake_mode = fake_mode or detect_fake_mode(example_inputs) or contextlib.nullcontext()
    with fake_mode, enable_python_dispatcher(), torch.no_grad():
        aten = make_fx(gm, tracing_mode="real", pre_dispatch=False)(*fakes)
    aten.graph.eliminate_dead_code()
    aten.recompile()
    inputs = [_input_info(p, v) for p, v in zip(placeholders, fakes)]
    return aten, make_context(aten, inputs, fakes, example_inputs, options)


def make_context(aten: fx.GraphModule, inputs: list[InputInfo], fakes: list, example_inputs: list,
                 options: CompileOptions) -> PassContext:
    """What the passes start from: named inputs, token seeds and the token symbol, symbol sources, buckets."""
    ctx = PassContext(options=options, token=1, hints={}, inputs=inputs, graph=aten)
    _dedupe_names(ctx.inputs)
    ctx.constants = {n.target: getattr(aten, n.target) for n in aten.graph.find_nodes(op="get_attr")}
    ctx.device = next((v.device for v in fakes if isinstance(v, torch.Tensor)), torch.device("cpu"))
    _find_tokens(ctx, fakes, example_inputs)
    if torch.is_grad_enabled() and any(getattr(x, "requires_grad", False) for x in example_inputs):
        ctx.note("nanoflow: this is an inference backend: its outputs carry no autograd graph")
    if options.plan == "auto" or _cuda_default_plan(ctx, fakes):
        _auto_plan(ctx, fakes)
    return ctx


def _input_info(node: fx.Node, fake: Any) -> InputInfo:
    arg = node.meta.get("grapharg")
    source = arg.source.name if arg is not None and arg.source is not None else node.name
    if not isinstance(fake, torch.Tensor):
        kind = "symint"
    elif isinstance(fake, torch.nn.Parameter):
        kind = "parameter"
    elif "._buffers[" in source:
        kind = "buffer"
    elif arg is not None and arg.pass_arg_as_tensor:
        kind = "scalar"
    else:
        kind = "input"
    return InputInfo(clean_source_name(source), kind, source)


def clean_source_name(source: str) -> str:
    """L['meta'].slot_mapping -> meta.slot_mapping; module state by its path in the module (layers.0.mlp.weight)."""
    source = re.sub(r"\.size\(\)\[(\d+)\]", r".size(\1)", source)
    state = re.search(r"\._(modules|parameters|buffers)\[", source)
    if state is not None:
        source = source[state.start():]
    source = re.sub(r"\._(?:modules|parameters|buffers)\['([^']*)'\]", r".\1", source)
    source = re.sub(r"^[LG]\['([^']*)'\]", r"\1", source)
    source = re.sub(r"\['([^']*)'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), source)
    return source.lstrip(".")


def _dedupe_names(inputs: list[InputInfo]) -> None:
    seen: dict[str, int] = {}
    for info in inputs:
        if info.name in seen:
            seen[info.name] += 1
            info.name = f"{info.name}#{seen[info.name]}"
        else:
            seen[info.name] = 1


def _find_tokens(ctx: PassContext, fakes: list, example_inputs: list) -> None:
    """Token seeds (option token_inputs, else dim 0 of the user inputs as long as the first), T, symbols, hints."""
    user = [i for i, info in enumerate(ctx.inputs) if info.kind == "input" and fakes[i].dim() > 0]
    wanted = ctx.options.token_inputs
    if wanted is not None:
        by_name = {ctx.inputs[i].name: i for i in user} | {ctx.inputs[i].source: i for i in user}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise NanoflowOptionsError(f"token_inputs names {missing}, which are not tensor inputs of the graph; "
                                       f"its inputs are: {', '.join(ctx.inputs[i].name for i in user)}")
        seeds = [by_name[n] for n in wanted]
    else:
        first = fakes[user[0]].shape[0] if user else None
        seeds = [i for i in user if _same_size(fakes[i].shape[0], first)]
    size = to_expr(fakes[seeds[0]].shape[0], {}) if seeds else None
    if size is not None and size.is_Symbol:
        # token inputs have one length by contract, even where Dynamo gave each its own symbol; the executor checks
        ctx.rename, ctx.token = {size: TOKEN}, TOKEN
        for i in seeds:
            other = to_expr(fakes[i].shape[0], {})
            if other.is_Symbol:
                ctx.rename[other] = TOKEN
    elif size is not None and size.is_Integer:
        ctx.token = int(size)
    else:
        ctx.note("nanoflow: found no token inputs with a plain token count; the graph runs unsplit")
        seeds = []
    ctx.seeds = {i: 0 for i in seeds}
    for i, (fake, example) in enumerate(zip(fakes, example_inputs)):
        dims = [(d, s) for d, s in enumerate(fake.shape)] if isinstance(fake, torch.Tensor) else [(None, fake)]
        for d, s in dims:
            expr = to_expr(s, ctx.rename)
            if expr.is_Symbol:
                ctx.symbol_sources.setdefault(expr.name, []).append([i, d])
                ctx.hints[expr] = int(example.shape[d]) if d is not None else int(example.node.hint
                                                                                 if isinstance(example, torch.SymInt)
                                                                                 else example)
    hint = ctx.hints.get(TOKEN, ctx.token)
    ctx.buckets = list(ctx.options.token_buckets or [hint]) if ctx.dynamic else [ctx.token]


def _same_size(a: Any, b: Any) -> bool:
    return b is not None and to_expr(a, {}) == to_expr(b, {})


def _parameter_shapes(ctx: PassContext, fakes: list) -> tuple[dict[str, tuple[int, ...]], int]:
    """The static shapes of the graph's parameters and buffers by name, and their floating-point element size."""
    state = {i.name: f for i, f in zip(ctx.inputs, fakes) if i.kind in ("parameter", "buffer")}
    shapes = {n: tuple(int(s) for s in f.shape) for n, f in state.items() if all(isinstance(s, int) for s in f.shape)}
    return shapes, next((f.dtype.itemsize for f in state.values() if f.dtype.is_floating_point), 2)


# Options that choose the plan themselves: given any of them, the stored plans stay out (plan='auto' would replace
# them, e.g. an ablation's overlap=False).
_PLAN_OPTIONS = frozenset({"plan", "schedule", "overlap", "nano_batches", "split", "sm_plan"})
NO_SEARCHED_PLAN = ("no plan of `nanoflow search` is stored for this GPU and layer shape: running with overlap off "
                    "(one stream), faster than the fixed nano-batch split on the GPUs measured; `nanoflow search` "
                    "stores plans, compile option overlap=true forces the split")


def _cuda_default_plan(ctx: PassContext, fakes: list) -> bool:
    """No plan asked for, on CUDA: plan with the plans `nanoflow search` stored for this layer shape on this GPU
    (plan='auto' on that database; returns True), as the search measured them. Where none are stored, run overlap
    off (returns False, as it does where a plan was asked for or the graph is not on CUDA): the fixed split (two
    nano-batches on 96/36 SMs) ran slower than one stream end to end on every GPU measured (0.92x on an H100, 0.89x
    on an H200, 1,024 prompts of 1024/512), so it is no default; overlap=true or plan=None asks for it."""
    if ctx.options.given & _PLAN_OPTIONS or ctx.device.type != "cuda":
        return False
    from .search.auto import stored_plans_db
    from .search.layer_graph import shapes_from_parameters

    config = shapes_from_parameters(_parameter_shapes(ctx, fakes)[0])
    db = stored_plans_db(config) if config is not None else None
    given = {k: getattr(ctx.options, k) for k in ctx.options.given}
    if db is None:
        ctx.options = CompileOptions.from_dict({**given, "overlap": False})
        ctx.note(f"nanoflow: {NO_SEARCHED_PLAN}")
        return False
    ctx.options = CompileOptions.from_dict({**given, "plan": "auto", "profile_db": db})
    return True


def _auto_plan(ctx: PassContext, fakes: list) -> None:
    """plan='auto': the search's plan for this graph's layer shapes (stored or searched from the profile database,
    else from its analytical model); it decides nano_batches, split, sm_plan, overlap and token_buckets."""
    from .search.auto import auto_options

    shapes, dtype_bytes = _parameter_shapes(ctx, fakes)
    planned, notes, ctx.plan_source = auto_options(shapes, list(ctx.buckets), ctx.options.profile_db, dtype_bytes)
    for note in notes:
        ctx.note(f"nanoflow: {note}")
    if planned:
        kept = {k: getattr(ctx.options, k) for k in ctx.options.given if k not in planned}
        ctx.options = CompileOptions.from_dict({**planned, **kept})
        ctx.buckets = list(ctx.options.token_buckets) if ctx.dynamic else [ctx.token]
