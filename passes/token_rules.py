"""How the token dimension flows through each operator, and when an operator can run on a slice of the tokens.

A rule looks at one node whose inputs carry token dims and answers `Split` (which arguments to narrow along which
dim, and where the token dim of each output is) or `Unsplit` (why the op must see all tokens at once). Rules are
positional: an op splits when output rows [s, e) along the token dim depend only on input rows [s, e) along theirs,
which holds for pointwise ops, row-wise GEMMs, reductions over other dims, gathers by a token-aligned index,
attention per query token and per batch row. Rules are keyed by op name (`aten.mm` for every overload or
`aten.mm.default` for one); `register_token_rule` adds more. Ops tagged pointwise need no entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx

from .symbolic import TokenEnv, same

Path = tuple  # (schema argument name,) or (name, list index)


@dataclass
class Split:
    narrow: dict  # Path -> dim narrowed to the nano-op's token range
    out_dims: list  # per output: its token dim (None: the output has none)
    kv: frozenset = field(default_factory=frozenset)  # paths of KV caches, written/read per token (causal)


@dataclass
class Unsplit:
    reason: str


Rule = Callable[[fx.Node, TokenEnv], "Split | Unsplit"]
_RULES: dict[str, Rule] = {}


def register_token_rule(*names: str) -> Callable[[Rule], Rule]:
    """Decorator: `rule(node, env)` decides how ops `names` (packet 'aten.mm' or overload 'aten.mm.default') split."""

    def deco(rule: Rule) -> Rule:
        for name in names:
            _RULES[name] = rule
        return rule

    return deco


def lookup(target: Any) -> Rule | None:
    if not isinstance(target, torch._ops.OpOverload):
        return None
    full = f"{target.namespace}.{target._opname}.{target._overloadname}"
    rule = _RULES.get(full) or _RULES.get(full.rpartition(".")[0])
    if rule is None and torch.Tag.pointwise in target.tags:
        return pointwise
    return rule


def bound_args(node: fx.Node) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


def tensor_args(node: fx.Node, env: TokenEnv) -> list[tuple[Path, fx.Node]]:
    out = []
    for name, value in bound_args(node).items():
        many = isinstance(value, (list, tuple))
        items = [((name, j), v) for j, v in enumerate(value)] if many else [((name,), value)]
        out += [(p, v) for p, v in items if isinstance(v, fx.Node) and env.shape(v) is not None]
    return out


def _outputs(node: fx.Node, env: TokenEnv, dim: int | None) -> list:
    return [dim if s is not None else None for s in env.info(node).shapes]


# ------------------------------------------------------------------------------------------------ pointwise

@register_token_rule("aten._to_copy", "aten.clone", "aten.copy", "aten.copy_", "aten.empty_like", "aten.zeros_like",
                     "aten.ones_like", "aten.full_like", "aten.masked_fill_", "aten.fill_", "aten.alias_copy")
def pointwise(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Broadcasting elementwise ops: every input that is not broadcast along the token dim is narrowed with it."""
    out_shape = env.info(node).shapes[0]
    rank = len(out_shape)
    args = tensor_args(node, env)
    out_dim = None
    for _, a in args:
        td = env.td(a)
        if td is not None:
            d = td + rank - len(env.shape(a))
            if out_dim not in (None, d):
                return Unsplit("inputs carry the token dim at different positions")
            out_dim = d
    narrow = {}
    for path, a in args:
        p = out_dim - (rank - len(env.shape(a)))
        if p < 0 or env.shape(a)[p] == 1:
            continue
        if not same(env.shape(a)[p], out_shape[out_dim]):
            return Unsplit("an input does not broadcast along the token dim")
        narrow[path] = p
    return Split(narrow, _outputs(node, env, out_dim))


# ----------------------------------------------------------------------------------------------- reductions

_REDUCTIONS = ("aten.sum.dim_IntList", "aten.mean.dim", "aten.amax", "aten.amin", "aten.var.correction",
               "aten.std.correction", "aten.var_mean.correction", "aten.std_mean.correction", "aten.prod.dim_int",
               "aten.any.dim", "aten.any.dims", "aten.all.dim", "aten.argmax", "aten.argmin", "aten.logsumexp",
               "aten.max.dim", "aten.min.dim", "aten.norm.ScalarOpt_dim", "aten.linalg_vector_norm", "aten._softmax",
               "aten._log_softmax", "aten.softmax.int", "aten.log_softmax.int", "aten._safe_softmax", "aten.cumsum",
               "aten.cumprod", "aten.sort", "aten.topk")


@register_token_rule(*_REDUCTIONS)
def reduction(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Reductions and scans over other dims keep rows independent; over the token dim they mix tokens."""
    args = bound_args(node)
    x = args.get("self", args.get("input"))
    rank, td = len(env.shape(x)), env.td(x)
    dims = args.get("dim")
    dims = list(range(rank)) if dims is None or dims == [] else [dims] if isinstance(dims, int) else list(dims)
    dims = [d % max(rank, 1) for d in dims]
    if td is None:
        return Unsplit("a non-token operand carries the token count")
    if td in dims:
        return Unsplit("reduces, scans or sorts over the token dim")
    outs = [None if s is None else td if len(s) == rank else td - sum(d < td for d in dims)
            for s in env.info(node).shapes]
    return _only_token_operand(node, env, x, td, outs)


@register_token_rule("aten.native_layer_norm", "aten._fused_rms_norm")
def norm(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    args = bound_args(node)
    x = args["input"]
    rank, td = len(env.shape(x)), env.td(x)
    if td is None or td >= rank - len(args["normalized_shape"]):
        return Unsplit("normalises over the token dim")
    return _only_token_operand(node, env, x, td, _outputs(node, env, td))


def _only_token_operand(node: fx.Node, env: TokenEnv, x: fx.Node, td: int, outs: list) -> Split | Unsplit:
    """Split along `x` alone; the other operands (weights, biases) must be free of tokens."""
    args = tensor_args(node, env)
    if any(a is not x and env.td(a) is not None for _, a in args):
        return Unsplit("a second operand carries the token dim")
    return Split({next(p for p, a in args if a is x): td}, outs)


@register_token_rule("aten.constant_pad_nd")
def pad(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    args = bound_args(node)
    x, pads = args["self"], list(args["pad"])
    rank, td = len(env.shape(x)), env.td(x)
    padded = {rank - 1 - i // 2 for i, p in enumerate(pads) if p != 0}
    if td is None or td in padded:
        return Unsplit("pads the token dim")
    return Split({("self",): td}, [td])


# ------------------------------------------------------------------------------------------------- GEMMs

@register_token_rule("aten.mm")
def mm(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    return _matmul(node, env, "self", "mat2", None)


@register_token_rule("aten.addmm")
def addmm(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    return _matmul(node, env, "mat1", "mat2", "self")


@register_token_rule("aten.bmm")
def bmm(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    return _matmul(node, env, "self", "mat2", None)


@register_token_rule("aten.baddbmm")
def baddbmm(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    return _matmul(node, env, "batch1", "batch2", "self")


def _matmul(node: fx.Node, env: TokenEnv, lhs: str, rhs: str, bias: str | None) -> Split | Unsplit:
    """Rows of the left operand, columns of the right one, or (batched) the batch dim of both."""
    args = bound_args(node)
    a, b = args[lhs], args[rhs]
    ta, tb = env.td(a), env.td(b)
    batched = len(env.shape(a)) == 3
    if batched and ta == 0 and tb == 0:
        narrow, out = {(lhs,): 0, (rhs,): 0}, 0
    elif ta == len(env.shape(a)) - 2 and tb is None:
        narrow, out = {(lhs,): ta}, ta
    elif ta is None and tb == len(env.shape(b)) - 1:
        narrow, out = {(rhs,): tb}, tb
    elif ta == len(env.shape(a)) - 1 or tb == len(env.shape(b)) - 2:
        return Unsplit("contracts over the token dim")
    else:
        return Unsplit("both GEMM operands carry the token dim")
    if bias is not None and isinstance(args[bias], fx.Node):
        shape, out_shape = env.shape(args[bias]), env.info(node).shapes[0]
        p = out - (len(out_shape) - len(shape))
        if p >= 0 and shape[p] != 1:
            if not same(shape[p], out_shape[out]):
                return Unsplit("the GEMM bias does not broadcast along the token dim")
            narrow[(bias,)] = p
        elif env.td(args[bias]) is not None:
            return Unsplit("the GEMM bias carries the token dim elsewhere")
    return Split(narrow, [out])


# ------------------------------------------------------------------------------------------ gathers, cat

@register_token_rule("aten.embedding")
def embedding(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    args = bound_args(node)
    if env.td(args["weight"]) is not None or env.td(args["indices"]) is None:
        return Unsplit("looks up rows of a token-dim table")
    return Split({("indices",): env.td(args["indices"])}, [env.td(args["indices"])])


@register_token_rule("aten.index.Tensor", "aten.index_select")
def index(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """x[idx] along one dim p: split by a token-aligned idx, or along x's token dim when p is another dim."""
    args = bound_args(node)
    x = args["self"]
    if "indices" in args:
        indices = list(args["indices"])
        used = [j for j, i in enumerate(indices) if i is not None]
        if len(used) != 1:
            return Unsplit("advanced indexing with several index tensors")
        p, idx, idx_path = used[0], indices[used[0]], ("indices", used[0])
    else:
        p, idx, idx_path = args["dim"] % len(env.shape(x)), args["index"], ("index",)
    tx, ti = env.td(x), env.td(idx)
    if tx is None and ti is not None:
        return Split({idx_path: ti}, [p + ti])
    if tx is not None and ti is None and tx != p:
        return Split({("self",): tx}, [tx if tx < p else tx + len(env.shape(idx)) - 1])
    return Unsplit("gathers rows of the token dim by index")


@register_token_rule("aten.cat")
def cat(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    args = bound_args(node)
    out_shape = env.info(node).shapes[0]
    dim = args["dim"] % len(out_shape)
    tds = {env.td(t) for t in args["tensors"] if env.td(t) is not None}
    if len(tds) != 1:
        return Unsplit("concatenates inputs with their token dims at different positions")
    (td,) = tds
    if td == dim:
        return Unsplit("concatenates along the token dim")
    narrow = {}
    for j, t in enumerate(args["tensors"]):
        shape = env.shape(t)
        if len(shape) == 1 and shape[0] == 0:  # legacy empty tensors are skipped by cat
            continue
        if not same(shape[td], out_shape[td]):
            return Unsplit("a concatenated input does not span the token dim")
        narrow[("tensors", j)] = td
    return Split(narrow, [td])


# ---------------------------------------------------------------------------------------------- attention

_SDPA = ("aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
         "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
         "aten._scaled_dot_product_fused_attention_overrideable", "aten.scaled_dot_product_attention")


@register_token_rule(*_SDPA)
def sdpa(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Attention over [batch, heads, seq, dim] splits along the batch, when the batch is the token dim."""
    args = bound_args(node)
    q = args["query"]
    if any(env.td(args[n]) != 0 for n in ("query", "key", "value")):
        return Unsplit("attention whose batch dim is not the token dim")
    narrow = {("query",): 0, ("key",): 0, ("value",): 0}
    batch = env.shape(q)[0]
    for name in ("attn_mask", "attn_bias"):
        mask = args.get(name)
        if isinstance(mask, fx.Node):
            shape = env.shape(mask)  # broadcast to [batch, heads, q, k]: a full batch dim is aligned with q's
            if len(shape) == 4 and same(shape[0], batch):
                narrow[(name,)] = 0
            elif len(shape) == 4 and shape[0] != 1:
                return Unsplit("the attention mask does not broadcast along the batch")
    outs = [0 if s is not None and len(s) and same(s[0], batch) else None for s in env.info(node).shapes]
    return Split(narrow, outs)


@register_token_rule("nanoflow.paged_attention")
def paged_attention(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Per query token; reads the KV cache causally (up to the nano-batch's last token, written by kv_append)."""
    return _per_token(node, env, ("query", "token_req", "positions"), ("k_cache", "v_cache"), [0])


@register_token_rule("nanoflow.kv_append")
def kv_append(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    return _per_token(node, env, ("key", "value", "slot_mapping"), ("k_cache", "v_cache"), [])


def _per_token(node: fx.Node, env: TokenEnv, per_token: tuple, caches: tuple, outs: list) -> Split | Unsplit:
    args = bound_args(node)
    lead = args[per_token[0]]
    if env.td(lead) != 0:
        return Unsplit(f"its {per_token[0]} does not have the token dim first")
    for name in per_token[1:]:
        if not same(env.shape(args[name])[0], env.shape(lead)[0]):
            return Unsplit(f"its {name} is not one entry per token")
    if any(env.td(args[c]) is not None for c in caches):
        return Unsplit("its KV cache carries the token dim")
    return Split({(n,): 0 for n in per_token}, outs, frozenset((c,) for c in caches))
