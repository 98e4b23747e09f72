"""Pass 3: the token dim of every value, and how each node runs: split into nano-ops, whole, or as a view.

Seeds are the token inputs (`ctx.seeds`, from option `token_inputs` or dim 0 of the user inputs that share the
first one's length). The dim then flows op by op through the rules of `token_rules` and `view_rules`. A node
that touches a token value but has no rule, or whose rule says it mixes tokens, is a barrier: it runs whole, and
one warning per reason names the nodes. Nodes that touch no token value simply run whole.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..runtime.ir import NETWORK
from . import collectives  # noqa: F401  (registers the token rules of functional collectives)
from . import token_rules
from .classify_ops import op_name
from .context import INFO, NodeInfo, PassContext
from .symbolic import TokenEnv, token_factor
from .view_rules import is_view, view_token_dims


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    env = TokenEnv(ctx.token)
    known = set(ctx.symbol_sources)
    for index, node in enumerate(gm.graph.find_nodes(op="placeholder")):
        info = node.meta[INFO]
        info.mode = "input"
        info.token_dims = [ctx.seeds.get(index)] if info.shapes else []
    for node in gm.graph.nodes:
        info = node.meta[INFO]
        if node.op == "get_attr":
            info.mode, info.token_dims = "const", [None] * len(info.shapes)
        elif node.op == "call_function":
            info.token_dims = [None] * len(info.shapes)
            _decide(node, info, env, ctx, known)
    return gm


def _decide(node: fx.Node, info: NodeInfo, env: TokenEnv, ctx: PassContext, known: set[str]) -> None:
    if node.target is operator.getitem:
        parent, index = node.args
        info.mode = "alias"
        dims = parent.meta[INFO].token_dims
        info.token_dims = [dims[index] if index < len(dims) else None]
        return
    if info.value is not None or not isinstance(node.target, torch._ops.OpOverload):
        value = info.value
        bound = value is not None and {s.name for s in value.free_symbols} <= known
        info.mode = "sym" if bound else "host"
        return
    if is_view(node.target):
        info.mode, info.token_dims = "view", view_token_dims(node, env)
        return
    info.mode = "whole"
    touched = any(d is not None for a in node.all_input_nodes for d in a.meta[INFO].token_dims)
    if not touched:
        return
    reason = _split_or_reason(node, info, env, known)
    if reason is not None:
        info.barrier = reason
        ctx.unsplit(node.name, f"{op_name(node.target)} {reason}")


def _split_or_reason(node: fx.Node, info: NodeInfo, env: TokenEnv, known: set[str]) -> str | None:
    """Mark `node` split and return None, or return why it must run whole."""
    sizes = [s for shape in info.shapes + info.strides if shape is not None for s in shape]
    if any(getattr(s, "free_symbols", set()) and {x.name for x in s.free_symbols} - known for s in sizes):
        return "has an output whose size depends on data"
    rule = token_rules.lookup(node.target)
    if rule is None and info.cls == NETWORK:
        return "is a collective without a split rule (functional all_reduce, all_gather_into_tensor and " \
               "reduce_scatter_tensor have one)"
    if rule is None:
        return "has no token rule (register one with passes.token_rules.register_token_rule)"
    decision = rule(node, env)
    if isinstance(decision, token_rules.Unsplit):
        return decision.reason
    used = used_outputs(node, len(info.shapes))
    for i, (shape, dim) in enumerate(zip(info.shapes, decision.out_dims)):
        if shape is not None and i in used and (dim is None or env.factor(shape[dim]) is None):
            return f"has an output (#{i}) without a token dim"
    args = dict(token_rules.tensor_args(node, env))
    for path, dim in decision.narrow.items():
        if token_factor(env.shape(args[path])[dim], env.token) is None:
            return f"has an operand ({'.'.join(map(str, path))}) whose dim {dim} is not a multiple of the token count"
    info.mode, info.token_dims = "split", list(decision.out_dims)
    info.narrow, info.causal = dict(decision.narrow), decision.kv
    return None


def used_outputs(node: fx.Node, count: int) -> set[int]:
    if count <= 1:
        return {0} if node.users else set()
    return {u.args[1] for u in node.users if u.target is operator.getitem}
