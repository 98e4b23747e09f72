"""Pass 8: the Schedule IR of all buckets, bound to an executor: the callable the backend returns.

The IR names every graph input (parameters by their module path, so that an artifact reloads them by name),
the constants the module must hold, the symbols and where each is read off the inputs, and per bucket the ops in
issue order with their streams and waits. Unsplit regions and fallbacks are recorded in its provenance.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import fx

from ..runtime import ir
from ..runtime.executors.base import bind
from .context import INFO, NanoflowWarning, PassContext
from .symbolic import expr_str


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    constants = [ir.ConstantSpec(name, _dtype(t.dtype), list(t.shape)) for name, t in ctx.constants.items()]
    output = gm.graph.find_nodes(op="output")[0]
    outputs = _output_arg(output.args[0], ctx)
    buckets = []
    for tokens in ctx.buckets:
        work = ctx.work[tokens]
        by_id = {n.op.id: n.op for n in work.ops}
        buckets.append(ir.BucketPlan(tokens, list(work.cuts), {c: list(s) for c, s in work.sizes.items()},
                                     work.streams, [by_id[i] for i in work.order], work.predicted_s))
    ctx.flush_warnings()
    ctx.ir = ir.ScheduleIR(
        signature=signature(gm, ctx),
        symbols=dict(ctx.symbol_sources),
        constants=constants,
        outputs=outputs,
        buckets=buckets,
        provenance=ir.Provenance(ctx.options.to_json(), ctx.plan_source, ctx.options.executor, torch.__version__,
                                 list(ctx.notes)),
    )
    settings = {"cuda_graphs": ctx.options.cuda_graphs}
    ctx.module, reason = bind(ctx.ir, ctx.constants, ctx.options.executor, ctx.device, settings)
    if reason is not None and ctx.options.executor != "auto":
        warnings.warn(f"nanoflow: {reason}", NanoflowWarning, stacklevel=2)
    return gm


def signature(gm: fx.GraphModule, ctx: PassContext) -> ir.Signature:
    """The graph's inputs and a hash of its code (needs only annotate_shapes): what a stored schedule is checked
    against before an exported artifact binds it to a freshly traced graph."""
    inputs = []
    for index, (node, spec) in enumerate(zip(gm.graph.find_nodes(op="placeholder"), ctx.inputs)):
        info = node.meta[INFO]
        tensor = bool(info.shapes)
        inputs.append(ir.InputSpec(spec.name, spec.kind, _dtype(info.dtypes[0]) if tensor else None,
                                   [expr_str(s) for s in info.shapes[0]] if tensor else None, ctx.seeds.get(index)))
    graph_hash = hashlib.sha256((gm.code + repr([(i.name, i.dtype, i.shape) for i in inputs])).encode()).hexdigest()
    return ir.Signature(graph_hash[:16], inputs, None if ctx.dynamic else int(ctx.token))


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _output_arg(value, ctx: PassContext) -> ir.Arg:
    if isinstance(value, fx.Node):
        info = value.meta[INFO]
        if info.mode == "sym":
            return ir.Sym(expr_str(info.value))
        return ir.Ref(ctx.values.names[value][0])
    if isinstance(value, (list, tuple)):
        return ir.Seq(tuple(_output_arg(v, ctx) for v in value), isinstance(value, tuple))
    return ir.Const(value)
