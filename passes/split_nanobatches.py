"""Pass 4: turn each node into ops of the Schedule IR, per token bucket: split nodes into nano-ops.

A split node gets one buffer per output (shape and strides of the whole value, with the actual T) and one nano-op
per nano-batch of its op class: inputs narrowed to the nano-batch's tokens along their token dims, the result
written into the buffer's slice, through the op's out= variant where it has one (else computed and copied in), so
no concat ever happens. Views are not nano-ops: they run once on the whole buffer, and consumers narrow the view.
Each op records what it reads and writes (root value, token range) for `build_dag`. Collectives and their waits
split in pairs, as `collectives` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
import torch
from torch import fx

from ..runtime import ir
from . import collectives
from .annotate_shapes import CONTEXT
from .classify_ops import op_name
from .context import INFO, BucketWork, PassContext
from .find_token_dim import used_outputs
from .symbolic import expr_str, token_factor
from .token_rules import bound_args


@dataclass
class NanoOp:
    op: ir.Op
    reads: list = field(default_factory=list)  # (root, (a, b) cut-index range or None = all of it)
    writes: list = field(default_factory=list)
    uses: list = field(default_factory=list)  # value names whose objects the op needs
    cost: tuple = (0.0, 0.0)  # FLOPs, bytes
    order: tuple | None = None  # NETWORK ops: their place in the one order all ranks issue collectives in


class Values:
    """Names of the values each node produces, the root value (storage owner) of each, and its token dim."""

    def __init__(self, gm: fx.GraphModule, ctx: PassContext):
        self.names: dict[fx.Node, list] = {}
        self.root: dict[str, str] = {}
        self.token_dim: dict[str, int | None] = {}
        self.position = {node: i for i, node in enumerate(gm.graph.nodes)}
        placeholders = {n: i for i, n in enumerate(gm.graph.find_nodes(op="placeholder"))}
        for node in gm.graph.nodes:
            info = node.meta[INFO]
            alias = _inplace_alias(node) or collectives.in_place_input(node)
            if node.op == "placeholder":
                names = [ctx.inputs[placeholders[node]].name]
            elif node.op == "get_attr":
                names = [node.target]
            elif info.mode == "alias":
                names = [self.names[node.args[0]][node.args[1]]]
            elif info.mode == "sym" or node.op == "output":
                names = []
            elif alias is not None:
                names = [self.names[alias][0]]
            elif info.mode == "host":
                names = [node.name]
            elif len(info.shapes) == 1 and not _is_list(node):
                names = [node.name]
            else:
                names = [f"{node.name}.{i}" for i in range(len(info.shapes))]
            self.names[node] = names
            if info.mode == "alias" or alias is not None:
                continue
            base = self.root[self.names[node.args[0]][0]] if info.mode == "view" else None
            for name, dim in zip(names, info.token_dims or [None] * len(names)):
                self.root[name] = base or name
                self.token_dim[name] = dim


def _is_list(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and len(schema.returns) == 1 and isinstance(schema.returns[0].type, torch.ListType)


def _inplace_alias(node: fx.Node) -> fx.Node | None:
    """The argument an in-place op returns (add_ returns self), whose value the node's result is."""
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or len(schema.returns) != 1:
        return None
    alias = schema.returns[0].alias_info
    if alias is None or not alias.is_write:
        return None
    for arg in schema.arguments:
        if arg.alias_info is not None and arg.alias_info.before_set == alias.before_set:
            return bound_args(node)[arg.name]
    return None


_OUT_TAG = getattr(torch.Tag, "out", None)  # torch 2.11 has no `out` tag


def _is_out(op: torch._ops.OpOverload) -> bool:
    """An out= overload: tagged so where torch tags them, else it takes keyword-only tensors it writes."""
    if _OUT_TAG is not None:
        return _OUT_TAG in op.tags
    return any(a.kwarg_only and a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments)


def out_variant(target: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """The `.out` overload taking the same arguments plus one out tensor per result."""
    schema = target._schema
    if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return None
    packet = getattr(getattr(torch.ops, target.namespace), target._opname)
    inputs = [(a.name, str(a.type)) for a in schema.arguments]
    for name in packet.overloads():
        candidate = getattr(packet, name)
        if not _is_out(candidate):
            continue
        args = candidate._schema.arguments
        outs = [a for a in args if a.alias_info is not None and a.alias_info.is_write]
        if [(a.name, str(a.type)) for a in args if a not in outs] == inputs and len(outs) == len(schema.returns):
            return candidate
    return None


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    values = Values(gm, ctx)
    ctx.values = values
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.meta[INFO].mode not in ("alias", "sym")]
    classes = {n.meta[INFO].cls for n in nodes if n.meta[INFO].mode == "split"}
    for tokens in ctx.buckets:
        strict = ctx.options.token_buckets is not None
        sizes = {c: ctx.options.sizes(tokens, c, strict) for c in ir.OP_CLASSES}
        bounds = {c: _cumsum(sizes[c]) for c in classes}
        cuts = sorted(set().union(*bounds.values())) if bounds else [0, tokens]
        work = BucketWork(tokens, {c: sizes[c] for c in sorted(classes)} or {ir.COMPUTE: [tokens]}, cuts)
        builder = _Builder(ctx, values, work, tokens)
        for node in nodes:
            info = node.meta[INFO]
            if info.mode == "split":
                segs = [(cuts.index(a), cuts.index(b)) for a, b in zip(bounds[info.cls], bounds[info.cls][1:])]
                (builder.collective if collectives.is_split_collective(node) else builder.split)(node, segs)
            else:
                builder.single(node)
        ctx.work[tokens] = work
    return gm


def _cumsum(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


class _Builder:
    def __init__(self, ctx: PassContext, values: Values, work: BucketWork, tokens: int):
        self.ctx, self.values, self.work, self.tokens = ctx, values, work, tokens
        self.subs = {**{s: v for s, v in ctx.hints.items() if isinstance(s, sympy.Symbol)}, CONTEXT: ctx.hints[CONTEXT]}

    def _emit(self, node: fx.Node, target: str, kind: str, **fields) -> ir.Op:
        op = ir.Op(len(self.work.ops), node.name, target, kind, node.meta[INFO].cls, **fields)
        order = collectives.order_key(node, op.seg, self.values.position) if op.cls == ir.NETWORK else None
        self.work.ops.append(NanoOp(op, order=order if kind == "compute" else None))
        return op

    def single(self, node: fx.Node) -> None:
        info = node.meta[INFO]
        kind = {"view": "view", "host": "host"}.get(info.mode, "compute")
        args, kwargs, refs = self._args(node, {}, None)
        outputs = [] if _inplace_alias(node) is not None else list(self.values.names[node])
        self._emit(node, op_name(node.target), kind, args=args, kwargs=kwargs, outputs=outputs)
        nano = self.work.ops[-1]
        nano.uses = [r.value for r, _ in refs]
        if kind != "view":
            mutated = _mutated_paths(node)
            for ref, path in refs:
                access = (self.values.root[ref.value], None)
                (nano.writes if path[:1] in mutated else nano.reads).append(access)
            nano.writes += [(name, None) for name in outputs if name is not None]  # readers of views find it
            nano.cost = self._cost(node, self.tokens) if kind == "compute" else (0.0, 0.0)

    def split(self, node: fx.Node, segs: list[tuple[int, int]]) -> None:
        info = node.meta[INFO]
        names = self.values.names[node]
        val = node.meta.get("val")
        fakes = list(val) if isinstance(val, (list, tuple)) else [val]
        inplace = _inplace_alias(node) is not None  # writes its own input: no buffer
        use_out = not inplace and bool(names) and all(d is not None for d in info.token_dims)
        out_op = out_variant(node.target) if use_out else None
        buffers = []
        used = used_outputs(node, len(info.shapes))
        for i, (name, shape, stride, dim) in enumerate(zip(names, info.shapes, info.strides, info.token_dims)):
            if inplace:
                break
            if shape is None or (out_op is None and i not in used):
                buffers.append(None)
                continue
            buffers.append(self._alloc(node, name, shape, stride, dim, fakes[i]))
        if out_op is not None:
            out_names = [a.name for a in out_op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        mutated = _mutated_paths(node)
        for seg in segs:
            args, kwargs, refs = self._args(node, info.narrow, seg)
            fields = {"args": args, "kwargs": kwargs, "seg": seg}
            if out_op is not None:
                fields["kwargs"] = {**kwargs, **dict(zip(out_names, buffers))}
                target = op_name(out_op)
            else:
                target = op_name(node.target)
                if buffers:
                    fields["outputs"] = [None] * len(names)
                    fields["copy_to"] = buffers
            self._emit(node, target, "compute", **fields)
            nano = self.work.ops[-1]
            nano.uses = [r.value for r, _ in refs] + [b.value for b in buffers if b is not None]
            for ref, path in refs:
                if path[:1] in info.causal:
                    access = (self.values.root[ref.value], seg if path[:1] in mutated else (0, seg[1]))
                else:
                    access = self._read(ref, seg)
                (nano.writes if path[:1] in mutated else nano.reads).append(access)
            nano.writes += [(b.value, seg) for b in buffers if b is not None]
            length = self.work.cuts[seg[1]] - self.work.cuts[seg[0]]
            nano.cost = self._cost(node, length)

    def collective(self, node: fx.Node, segs: list[tuple[int, int]]) -> None:
        """A collective and its wait, one pair per nano-batch, nano-wait k right after nano-collective k (so op ids
        follow the order of `collectives.order_key`): in place on the input's rows, or out of place into a value per
        nano-batch that the wait copies into the rows of its buffer once it is valid. A wait comes with its
        collective, so its own turn emits nothing."""
        if collectives.collective_of(node) is not node:
            return
        wait = next(iter(node.users))
        info, x = node.meta[INFO], collectives.in_place_input(node)
        dim = info.token_dims[0]
        if x is None:
            winfo = wait.meta[INFO]
            buffer = self._alloc(wait, self.values.names[wait][0], winfo.shapes[0], winfo.strides[0], dim,
                                 wait.meta["val"])
        for k, seg in enumerate(segs):
            length = self.work.cuts[seg[1]] - self.work.cuts[seg[0]]
            if x is not None:  # all_reduce_ on rows of x, then the wait on them
                name = self.values.names[x][0]
                ref = ir.Ref(name, dim, expr_str(token_factor(info.shapes[0][dim], self.ctx.token)))
                consts = [_const(a) for a in list(bound_args(node).values())[1:]]
                self._emit(node, collectives.ALL_REDUCE_INPLACE, "compute", args=[ref, *consts], seg=seg)
                self._emit(wait, collectives.WAIT, "compute", args=[ref], seg=seg)
                for nano in self.work.ops[-2:]:
                    nano.uses, nano.writes = [name], [(self.values.root[name], seg)]
            else:  # the functional collective on the narrowed input; its wait copies the result into its rows
                args, kwargs, refs = self._args(node, info.narrow, seg)
                value = collectives.nano_value(node, k)
                self._emit(node, op_name(node.target), "compute", args=args, kwargs=kwargs, outputs=[value], seg=seg)
                nano = self.work.ops[-1]
                nano.uses, nano.writes = [r.value for r, _ in refs], [(value, None)]
                nano.reads = [self._read(ref, seg) for ref, _ in refs]
                self._emit(wait, collectives.WAIT, "compute", args=[ir.Ref(value)], outputs=[None],
                           copy_to=[buffer], seg=seg)
                w = self.work.ops[-1]
                w.uses, w.reads, w.writes = [value, buffer.value], [(value, None)], [(buffer.value, seg)]
            self.work.ops[-2].cost = self._cost(node, length)  # the wait costs nothing: it only holds its stream

    def _read(self, ref: ir.Ref, seg: tuple) -> tuple:
        """(root, token range) that `ref` touches: the nano-batch's rows where it is narrowed along its token dim."""
        aligned = ref.dim is not None and ref.dim == self.values.token_dim.get(ref.value)
        return self.values.root[ref.value], seg if aligned else None

    def _alloc(self, node: fx.Node, name: str, shape: tuple, stride: tuple, dim: int, fake) -> ir.Ref:
        """A buffer for a split value, and the Ref by which nano-ops write their rows of it."""
        self._emit(node, "aten.empty_strided.default", "alloc", outputs=[name],
                   args=[ir.Seq(tuple(ir.Sym(expr_str(s)) for s in shape)),
                         ir.Seq(tuple(ir.Sym(expr_str(s)) for s in stride))],
                   kwargs={"dtype": _const(fake.dtype), "device": _const(fake.device)})
        return ir.Ref(name, dim, expr_str(token_factor(shape[dim], self.ctx.token)))

    def _args(self, node: fx.Node, narrow: dict, seg) -> tuple[list, dict, list]:
        """IR arguments of `node` (narrowed where `narrow` says, when `seg` is set) and the Refs with their paths."""
        refs: list = []
        schema = node.target._schema if isinstance(node.target, torch._ops.OpOverload) else None
        names = [a.name for a in schema.arguments] if schema is not None else []

        def convert(x, path):
            if isinstance(x, fx.Node):
                info = x.meta[INFO]
                if info.mode == "sym":
                    return ir.Sym(expr_str(info.value))
                name = self.values.names[x][0]
                dim = narrow.get(path) if seg is not None else None
                factor = "1" if dim is None else expr_str(token_factor(info.shapes[0][dim], self.ctx.token))
                ref = ir.Ref(name, dim, factor)
                refs.append((ref, path))
                return ref
            if isinstance(x, (list, tuple)):
                return ir.Seq(tuple(convert(v, path + (j,)) for j, v in enumerate(x)), isinstance(x, tuple))
            return _const(x)

        args = [convert(a, (names[i],) if i < len(names) else (i,)) for i, a in enumerate(node.args)]
        kwargs = {k: convert(v, (k,)) for k, v in node.kwargs.items()}
        return args, kwargs, refs

    def _cost(self, node: fx.Node, tokens: int) -> tuple[float, float]:
        info = node.meta[INFO]
        subs = {**self.subs, self.ctx.token: tokens} if self.ctx.dynamic else self.subs
        return _evaluate(info.flops, subs), _evaluate(info.bytes, subs)


def _evaluate(expr, subs: dict) -> float:
    """A cost at the hinted sizes; sizes only known at run time (data-dependent) count as 1."""
    value = sympy.sympify(sympy.sympify(expr).xreplace(subs))
    return float(value.xreplace({s: sympy.Integer(1) for s in value.free_symbols}))


def _mutated_paths(node: fx.Node) -> set[tuple]:
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return set()
    return {(a.name,) for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}


def _const(x) -> ir.Const:
    if isinstance(x, torch.dtype):
        return ir.Const(str(x).removeprefix("torch."), "dtype")
    if isinstance(x, torch.device):
        return ir.Const(str(x), "device")
    if isinstance(x, torch.layout):
        return ir.Const(str(x).removeprefix("torch."), "layout")
    if isinstance(x, torch.memory_format):
        return ir.Const(str(x).removeprefix("torch."), "memory_format")
    if x is None or isinstance(x, (bool, int, float, str)):
        return ir.Const(x)
    raise TypeError(f"cannot put {type(x).__name__} {x!r} into the Schedule IR")

