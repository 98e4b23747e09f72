"""Functional collectives per nano-batch, and the one order in which every rank issues them.

A collective traces as two nodes, `_c10d_functional.all_reduce(x)` (issues the communication, returns at once)
and `wait_tensor(result)` (the result is valid after it). An all-reduce is row-independent, so it splits along
the token dim into one collective per nano-batch, each followed by its own wait: nano-batch k's all-reduce then
runs on the NETWORK stream while the COMPUTE stream runs nano-batch k+1's GEMMs. Two ways to emit it:

- in place (`all_reduce_` on rows [s, e) of x) when x is a contiguous temporary that nothing else reads, such as
  the output of a row-parallel GEMM: no copy at all;
- out of place otherwise: the functional collective on the narrowed input gives a value per nano-batch, and its
  wait copies that value into the rows of the result's buffer once it is valid (never before the wait).

`all_gather_into_tensor` / `reduce_scatter_tensor` concatenate or scatter along dim 0: they split only when the
token dim lies behind dims of size 1 (a nano-batch's rows are then contiguous in input and output alike); along
dim 0 itself a nano-batch's rows would be scattered over the result, so they run unsplit with a warning.

NCCL matches collectives across ranks by the order each rank issues them in, and deadlocks if two ranks differ.
`build_dag` chains every NETWORK nano-op by `order_key` (its place in the graph, then its nano-batch, a split
wait right after its nano-collective), so the issue order is the graph's program order, identical on every rank
whatever the cost model or a searched plan says; `check_order` asserts it after scheduling. The chain also keeps
nano-batch k's wait before nano-batch k+1's collective: torch keys pending collectives by storage, and a wait
pops them all, so a later nano-collective on the same buffer issued first would be waited for too.
"""

from __future__ import annotations

from typing import Any

import sympy
from torch import fx

from ..runtime.ir import NETWORK
from .classify_ops import op_name
from .context import INFO, BucketWork
from .symbolic import TokenEnv, same
from .token_rules import Split, Unsplit, bound_args, register_token_rule

_NS = "_c10d_functional"
ALL_REDUCE = f"{_NS}.all_reduce.default"
ALL_REDUCE_INPLACE = f"{_NS}.all_reduce_.default"
WAIT = f"{_NS}.wait_tensor.default"
GATHER_SCATTER = (f"{_NS}.all_gather_into_tensor.default", f"{_NS}.reduce_scatter_tensor.default")


def _name(node: Any) -> str | None:
    return op_name(node.target) if isinstance(node, fx.Node) and node.op == "call_function" else None


# ---------------------------------------------------------------------------------------------- token rules

@register_token_rule(f"{_NS}.all_reduce")
def all_reduce(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Reduces each element over the ranks: rows of the result depend only on the same rows of the input."""
    return _paired(node, env)


@register_token_rule(f"{_NS}.all_gather_into_tensor", f"{_NS}.reduce_scatter_tensor")
def gather_or_scatter(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    x = bound_args(node)["input"]
    td = env.td(x)
    if td == 0:
        return Unsplit("gathers or scatters along dim 0, the token dim: a nano-batch's rows would not be one "
                       "contiguous range of the result")
    if any(not same(s, 1) for s in env.shape(x)[:td]):
        return Unsplit("has dims before the token dim, so a nano-batch's rows of its input are not contiguous, "
                       "as the collective needs them")
    return _paired(node, env)


@register_token_rule(f"{_NS}.wait_tensor")
def wait_tensor(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    """Split exactly when its collective is: nano-wait k pairs with nano-collective k."""
    src = bound_args(node)["tensor"]
    if _name(src) not in (ALL_REDUCE, *GATHER_SCATTER) or env.info(src).mode != "split":
        return Unsplit("waits for a collective that runs unsplit")
    return Split({("tensor",): env.td(src)}, [env.td(src)])


def _paired(node: fx.Node, env: TokenEnv) -> Split | Unsplit:
    users = list(node.users)
    if len(users) != 1 or _name(users[0]) != WAIT or env.info(users[0]).cls != env.info(node).cls:
        return Unsplit("its result is read by something other than one wait_tensor")
    td = env.td(bound_args(node)["input"])
    return Split({("input",): td}, [td])


# ------------------------------------------------------------------------------------------------ emitting

def is_split_collective(node: fx.Node) -> bool:
    """A split node that `split_nanobatches` must emit as nano-collectives (or their waits)."""
    return _name(node) in (ALL_REDUCE, WAIT, *GATHER_SCATTER) and node.meta[INFO].mode == "split"


def collective_of(node: fx.Node) -> fx.Node:
    """The collective a split wait_tensor waits for (the node itself for a collective)."""
    return node.args[0] if _name(node) == WAIT else node


def in_place_input(node: fx.Node) -> fx.Node | None:
    """The input x that a split all_reduce (or its wait) reduces in place: a contiguous, real-valued temporary
    whose only reader is the all_reduce, so overwriting it is invisible. None: the collective runs out of place."""
    coll = collective_of(node)
    if _name(coll) != ALL_REDUCE or coll.meta[INFO].mode != "split":
        return None
    x = coll.args[0]
    info = x.meta[INFO]
    schema = getattr(x.target, "_schema", None)
    if (x.op != "call_function" or info.mode not in ("split", "whole") or len(x.users) != 1 or schema is None
            or any(r.alias_info is not None for r in schema.returns) or info.dtypes[0].is_complex):
        return None
    shape, strides, td = info.shapes[0], info.strides[0], info.token_dims[0]
    if any(not same(s, 1) for s in shape[:td]) or not _contiguous(shape, strides):
        return None
    return x


def _contiguous(shape: tuple, strides: tuple) -> bool:
    expected = sympy.Integer(1)
    for size, stride in reversed(list(zip(shape, strides))):
        if not same(size, 1) and not same(stride, expected):
            return False
        expected = expected * size
    return True


def nano_value(coll: fx.Node, k: int) -> str:
    """The name of out-of-place nano-collective k's result ('@' never appears in a node's name)."""
    return f"{coll.name}@{k}"


# --------------------------------------------------------------------------------------------------- order

def order_key(node: fx.Node, seg: tuple | None, position: dict) -> tuple:
    """Where a NETWORK op stands in the order every rank issues collectives in: its place in the graph (a split
    wait: its collective's), its nano-batch, then collective before wait."""
    coll = collective_of(node) if is_split_collective(node) else node
    return position[coll], 0 if seg is None else seg[0], int(coll is not node)


def check_order(work: BucketWork) -> None:
    """Collectives must issue in `order_key` order on every rank (NCCL deadlocks otherwise)."""
    keys = {n.op.id: n.order for n in work.ops if n.order is not None}
    issued = [keys[i] for i in work.order if i in keys]
    if issued != sorted(issued):
        raise AssertionError(f"bucket {work.tokens}: collectives are not issued in program order, so ranks could "
                             f"disagree on their order: {issued}")
