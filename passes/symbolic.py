"""Sizes as sympy expressions: Dynamo's SymInts with the token count renamed `T`, and what rules ask of them."""

from __future__ import annotations

from typing import Any

import sympy
import torch
from torch import fx

from .context import INFO, NodeInfo

TOKEN = sympy.Symbol("T", integer=True, positive=True)


def to_expr(value: Any, rename: dict) -> Any:
    """int/float/SymInt/SymFloat/SymBool -> sympy, with Dynamo's token symbol replaced by T."""
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return value.node.expr.xreplace(rename)
    if isinstance(value, bool):
        return sympy.true if value else sympy.false
    if isinstance(value, int):
        return sympy.Integer(value)
    if isinstance(value, float):
        return sympy.Float(value)
    raise TypeError(f"not a size: {value!r}")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def token_factor(size: Any, token: Any) -> Any:
    """size / T when that is an integer expression free of T (the token dim holds T*factor rows), else None."""
    factor = sympy.simplify(sympy.sympify(size) / token)
    if factor.is_integer is not True or (isinstance(token, sympy.Symbol) and token in factor.free_symbols):
        return None
    return factor if factor.is_positive is not False else None


def expr_str(expr: Any) -> str:
    """Printed so that `runtime.ir.compile_expr` reads it back."""
    return str(sympy.sympify(expr))


class TokenEnv:
    """What token rules may ask about a node's operands."""

    def __init__(self, token: Any):
        self.token = token

    @staticmethod
    def info(node: fx.Node) -> NodeInfo:
        return node.meta[INFO]

    def shape(self, node: Any, index: int = 0) -> tuple | None:
        if not isinstance(node, fx.Node) or INFO not in node.meta:
            return None
        shapes = node.meta[INFO].shapes
        return shapes[index] if index < len(shapes) else None

    def td(self, node: Any, index: int = 0) -> int | None:
        if not isinstance(node, fx.Node) or INFO not in node.meta:
            return None
        dims = node.meta[INFO].token_dims
        return dims[index] if index < len(dims) else None

    def factor(self, size: Any) -> Any:
        return token_factor(size, self.token)
