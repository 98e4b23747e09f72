"""Pass 1: sizes of every value as sympy expressions in the token count T, and FLOPs and bytes of every node.

The lowered graph already carries fake tensors (`meta['val']`); this pass restates their sizes with Dynamo's
token symbol renamed `T`, so that a node's cost is an expression that the schedule evaluates per nano-batch.
Attention over the KV cache also depends on the context length, the symbol `C` (hinted at DEFAULT_CONTEXT).
"""

from __future__ import annotations

import operator
from math import prod

import sympy
import torch
from torch import fx

from .context import INFO, NodeInfo, PassContext
from .symbolic import to_expr

CONTEXT = sympy.Symbol("C", integer=True, positive=True)
DEFAULT_CONTEXT = 1024


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    ctx.hints.setdefault(CONTEXT, DEFAULT_CONTEXT)
    rename = ctx.rename
    for node in gm.graph.nodes:
        info = NodeInfo()
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in val):
            parts = list(val)
        else:
            parts = [val]
        for part in parts:
            if isinstance(part, torch.Tensor):
                info.shapes.append(tuple(to_expr(s, rename) for s in part.shape))
                info.strides.append(tuple(to_expr(s, rename) for s in part.stride()))
                info.dtypes.append(part.dtype)
            elif len(parts) > 1:
                info.shapes.append(None)
                info.strides.append(None)
                info.dtypes.append(None)
        if not info.shapes and isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
            info.value = to_expr(val, rename)
        node.meta[INFO] = info
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is not operator.getitem:
            node.meta[INFO].flops, node.meta[INFO].bytes = _cost(node)
    return gm


def _numel(shape: tuple) -> sympy.Expr:
    return sympy.Integer(prod(shape)) if all(isinstance(s, int) for s in shape) else sympy.Mul(*shape)


def _tensor(node) -> tuple[tuple, int] | None:
    if isinstance(node, fx.Node) and INFO in node.meta and node.meta[INFO].shapes:
        info = node.meta[INFO]
        if info.shapes[0] is not None:
            return info.shapes[0], info.dtypes[0].itemsize
    return None


def _nbytes(node) -> sympy.Expr:
    t = _tensor(node)
    return _numel(t[0]) * t[1] if t else sympy.Integer(0)


def _cost(node: fx.Node) -> tuple[sympy.Expr, sympy.Expr]:
    """(FLOPs, bytes moved); GEMMs and attention exactly, gathers by what they touch, the rest by their outputs."""
    info = node.meta[INFO]
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    schema = getattr(node.target, "_schema", None)
    if schema is not None and schema.returns and schema.returns[0].alias_info is not None \
            and not schema.returns[0].alias_info.is_write:
        return sympy.Integer(0), sympy.Integer(0)  # a view
    inputs = [a for a in node.all_input_nodes if _tensor(a)]
    out_bytes = sum((_numel(s) * d.itemsize for s, d in zip(info.shapes, info.dtypes) if s is not None),
                    sympy.Integer(0))
    in_bytes = sum((_nbytes(a) for a in inputs), sympy.Integer(0))
    if name in ("mm", "addmm", "bmm", "baddbmm"):
        a, b = (node.args[0], node.args[1]) if name in ("mm", "bmm") else (node.args[1], node.args[2])
        sa, sb = _tensor(a)[0], _tensor(b)[0]
        return 2 * _numel(sa) * sb[-1], in_bytes + out_bytes
    if name.startswith("_scaled_dot_product") or name == "scaled_dot_product_attention":
        q, k = _tensor(node.args[0])[0], _tensor(node.args[1])[0]
        return 4 * _numel(q) * k[-2], in_bytes + out_bytes
    if name == "paged_attention":
        (tokens, heads, dim), cache = _tensor(node.args[0])[0], _tensor(node.args[1])
        kv_read = tokens * CONTEXT * cache[0][2] * cache[0][3] * 2 * cache[1]
        return 4 * tokens * heads * dim * CONTEXT, kv_read + 2 * _nbytes(node.args[0])
    if name == "kv_append":
        return sympy.Integer(0), 2 * (_nbytes(node.args[0]) + _nbytes(node.args[1])) + _nbytes(node.args[4])
    if name in ("embedding", "index", "index_select"):
        return sympy.Integer(0), 2 * out_bytes
    flops = sum((_numel(s) for s in info.shapes if s is not None), sympy.Integer(0))
    return flops, in_bytes + out_bytes
