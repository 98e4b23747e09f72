"""Where the token dim goes through a view. Views run once on the whole tensor (they only describe memory), so
the question is only which dim of the view indexes the same tokens, in the same order, as the base's token dim.

A reshape keeps it when the dims before it hold the same number of elements in base and view and the view's dim
is a multiple of T: rows [s, e) of the base are then rows [s*f, e*f) of the view (HF models flatten [B, S, H] to
[B*S, H] before a GEMM: the token dim B becomes B*S rows, factor S). Anything else loses the token dim.
"""

from __future__ import annotations

from typing import Any, Callable

import sympy
import torch
from torch import fx

from .symbolic import TokenEnv, same, token_factor
from .token_rules import bound_args

INT_MAX = 2**63 - 1


def is_view(target: Any) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target is torch.ops.aten._unsafe_view.default:
        return True
    schema = target._schema
    if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return False
    return bool(schema.returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def view_token_dims(node: fx.Node, env: TokenEnv) -> list[int | None]:
    """Token dim of each output of a view node (None where it is lost)."""
    outputs = env.info(node).shapes
    base = node.args[0]
    td = env.td(base)
    rule = _VIEW_RULES.get(node.target._opname)
    if td is None or rule is None:
        return [None] * len(outputs)
    args = bound_args(node)
    rank = len(env.shape(base))
    return [None if shape is None else rule(args, td, rank, env.shape(base), shape, env) for shape in outputs]


def _reshape(args, td, rank, in_shape, out_shape, env) -> int | None:
    prefix = sympy.Mul(*in_shape[:td])
    acc = sympy.Integer(1)
    for e, size in enumerate(out_shape):
        if same(acc, prefix) and token_factor(size, env.token) is not None:
            return e
        acc = acc * size
    return None


def _transpose(args, td, rank, in_shape, out_shape, env) -> int:
    d0, d1 = args["dim0"] % rank, args["dim1"] % rank
    return d1 if td == d0 else d0 if td == d1 else td


def _t(args, td, rank, in_shape, out_shape, env) -> int:
    return td if rank < 2 else 1 - td


def _permute(args, td, rank, in_shape, out_shape, env) -> int:
    return [d % rank for d in args["dims"]].index(td)


def _unsqueeze(args, td, rank, in_shape, out_shape, env) -> int:
    dim = args["dim"] % (rank + 1)
    return td + (dim <= td)


def _squeeze(args, td, rank, in_shape, out_shape, env) -> int | None:
    dims = args.get("dim", args.get("dims"))
    dims = range(rank) if dims is None else [dims] if isinstance(dims, int) else dims
    removed = [d % rank for d in dims if in_shape[d % rank] == 1]
    return None if td in removed else td - sum(d < td for d in removed)


def _expand(args, td, rank, in_shape, out_shape, env) -> int:
    return td + len(out_shape) - rank


def _same_dim(args, td, rank, in_shape, out_shape, env) -> int:
    return td


def _slice(args, td, rank, in_shape, out_shape, env) -> int | None:
    """Slicing another dim keeps the token dim; slicing it keeps it only when nothing is cut off."""
    if args["dim"] % rank != td:
        return td
    return td if len(out_shape) == rank and same(out_shape[td], in_shape[td]) and args.get("step", 1) == 1 else None


def _select(args, td, rank, in_shape, out_shape, env) -> int | None:
    dim = args["dim"] % rank
    return None if dim == td else td - (dim < td)


def _split(args, td, rank, in_shape, out_shape, env) -> int | None:
    return None if args["dim"] % rank == td else td


_VIEW_RULES: dict[str, Callable] = {
    "view": _reshape, "_unsafe_view": _reshape, "reshape": _reshape, "_reshape_alias": _reshape,
    "transpose": _transpose, "t": _t, "permute": _permute, "unsqueeze": _unsqueeze, "squeeze": _squeeze,
    "expand": _expand, "alias": _same_dim, "detach": _same_dim, "lift_fresh": _same_dim,
    "view_as_real": _same_dim, "view_as_complex": _same_dim, "slice": _slice, "narrow": _slice, "select": _select,
    "split": _split, "split_with_sizes": _split, "unbind": _select, "chunk": _split,
}
