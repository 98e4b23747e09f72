"""The Schedule IR: what the compiler hands an executor, as plain versioned dataclasses that round-trip through JSON.

A plan is a list of ops per token bucket, in issue order. Each op calls one operator (`aten.mm.out`, resolvable
through `torch.ops`) on values named by strings: graph inputs (parameters are referenced by name, never stored),
constants the compiled module holds, buffers allocated by earlier ops, and op results. A `Ref` with `dim` set is
narrowed to the op's token range, so that one op list serves every token count: ranges are stored as indices into
the bucket's cut list (`seg`), and an executor maps the cuts to the actual token count at run time. Sizes and
narrowing factors are integer expressions over named symbols (`T` is the token count), kept as strings that
`compile_expr` evaluates without `eval`.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Union

FORMAT_VERSION = 2  # 2: ops may carry a fusion `group`; version 1 (no groups) still loads
READABLE_VERSIONS = (1, 2)
TOKEN_SYMBOL = "T"
# Resource classes of ops. LIGHT ops (norms, activations, rope) have no stream of their own: they run on COMPUTE's.
COMPUTE, MEMORY, NETWORK, LIGHT = "COMPUTE", "MEMORY", "NETWORK", "LIGHT"
OP_CLASSES = (COMPUTE, MEMORY, NETWORK, LIGHT)
STREAM_CLASSES = (COMPUTE, MEMORY, NETWORK)
HOST = None  # the stream of ops that only touch tensor metadata or Python scalars (alloc, views, item())


class NanoflowWarning(UserWarning):
    """A region the backend runs unsplit, or a fallback the compiler or an executor took; results are unaffected."""


@dataclass(frozen=True)
class Ref:
    """A value; with `dim` set, narrowed to rows [s*factor, e*factor) of that dim for the op's token range [s, e)."""

    value: str
    dim: int | None = None
    factor: str = "1"


@dataclass(frozen=True)
class Sym:
    """An integer (or float) expression over the plan's symbols, evaluated once per distinct binding."""

    expr: str


@dataclass(frozen=True)
class Const:
    """A JSON scalar; `type` says how to rebuild torch objects (dtype, device, layout, memory_format)."""

    value: Any
    type: str = "py"


@dataclass(frozen=True)
class Seq:
    items: tuple
    tuple: bool = False


Arg = Union[Ref, Sym, Const, Seq]


@dataclass
class Op:
    """One operator call. `kind`: alloc / view / host (no stream) or compute (runs on `stream`).

    Results bind to `outputs` (None drops one); a result listed in `copy_to` is copied into that narrowed buffer
    instead (ops without an out= variant). `seg` = (a, b): the op covers tokens [cuts[a], cuts[b]); None = all.
    `waits`: ids of ops on other streams whose completion this op waits for (the minimal set).
    `group`: LIGHT ops with the same group id run as one fused kernel (consecutive in issue order, one stream,
    one segment; only the first may wait); None runs the op on its own.
    """

    id: int
    node: str
    target: str
    kind: str
    cls: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    copy_to: list = field(default_factory=list)
    seg: tuple | None = None
    stream: int | None = HOST
    waits: list = field(default_factory=list)
    group: int | None = None


@dataclass
class StreamSpec:
    id: int
    classes: list
    sms: int


@dataclass
class BucketPlan:
    """The schedule for one token count: cut points, nano-batch sizes per op class, streams and ops in issue order."""

    tokens: int
    cuts: list
    nano_batches: dict
    streams: list
    ops: list
    predicted_s: float | None = None


@dataclass
class InputSpec:
    """A positional input of the compiled graph. kind: input, parameter, buffer, scalar (a Python number Dynamo
    passes as a 0-d tensor) or symint. `shape` entries are expressions; `token_dim` is set for token seeds."""

    name: str
    kind: str
    dtype: str | None = None
    shape: list | None = None
    token_dim: int | None = None


@dataclass
class ConstantSpec:
    """A tensor constant of the graph, held by the compiled module (an exported artifact stores it by name)."""

    name: str
    dtype: str
    shape: list


@dataclass
class Signature:
    graph_hash: str
    inputs: list
    tokens_static: int | None = None  # the token count when the graph was traced with static shapes


@dataclass
class Provenance:
    options: dict
    plan_source: str
    executor: str
    torch_version: str
    notes: list = field(default_factory=list)  # fallbacks and unsplit regions, one line each


@dataclass
class ScheduleIR:
    signature: Signature
    symbols: dict  # name -> [[input index, dim or None (the input is a SymInt)], ...]: where it is read, all equal
    constants: list
    outputs: Seq
    buckets: list
    provenance: Provenance
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(_encode(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ScheduleIR":
        data = json.loads(text)
        if data.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"Schedule IR version {data.get('version')!r} is not supported "
                             f"(expected one of {READABLE_VERSIONS})")
        return _decode_ir(data)

    def bucket(self, tokens: int) -> BucketPlan:
        """The plan of the exact bucket if there is one, else of the nearest (ties go to the larger)."""
        return min(self.buckets, key=lambda b: (abs(b.tokens - tokens), -b.tokens))


# ---------------------------------------------------------------------------------------------- JSON encoding


def arg_to_json(arg: Arg) -> Any:
    if isinstance(arg, Ref):
        return {"ref": arg.value, "dim": arg.dim, "factor": arg.factor}
    if isinstance(arg, Sym):
        return {"sym": arg.expr}
    if isinstance(arg, Const):
        value = arg.value
        if isinstance(value, float) and not math.isfinite(value):
            return {"const": repr(value), "type": "float"}
        return {"const": value, "type": arg.type}
    if isinstance(arg, Seq):
        return {"seq": [arg_to_json(a) for a in arg.items], "tuple": arg.tuple}
    raise TypeError(f"not an IR argument: {arg!r}")


def arg_from_json(data: Any) -> Arg:
    if "ref" in data:
        return Ref(data["ref"], data["dim"], data["factor"])
    if "sym" in data:
        return Sym(data["sym"])
    if "const" in data:
        value = data["const"]
        if data["type"] == "float":
            value = float(value)
        return Const(value, data["type"])
    if "seq" in data:
        return Seq(tuple(arg_from_json(a) for a in data["seq"]), data["tuple"])
    raise ValueError(f"not an IR argument: {data!r}")


def _encode(ir: ScheduleIR) -> dict:
    def op(o: Op) -> dict:
        return {**vars(o), "args": [arg_to_json(a) for a in o.args],
                "kwargs": {k: arg_to_json(a) for k, a in o.kwargs.items()},
                "copy_to": [None if r is None else arg_to_json(r) for r in o.copy_to]}

    return {
        "version": ir.version,
        "signature": {**vars(ir.signature), "inputs": [vars(i) for i in ir.signature.inputs]},
        "symbols": ir.symbols,
        "constants": [vars(c) for c in ir.constants],
        "outputs": arg_to_json(ir.outputs),
        "buckets": [{**vars(b), "streams": [vars(s) for s in b.streams], "ops": [op(o) for o in b.ops]}
                    for b in ir.buckets],
        "provenance": vars(ir.provenance),
    }


def _decode_ir(data: dict) -> ScheduleIR:
    buckets = []
    for b in data["buckets"]:
        ops = [Op(**{**o, "args": [arg_from_json(a) for a in o["args"]],
                     "kwargs": {k: arg_from_json(a) for k, a in o["kwargs"].items()},
                     "copy_to": [None if r is None else arg_from_json(r) for r in o["copy_to"]],
                     "seg": None if o["seg"] is None else tuple(o["seg"])}) for o in b["ops"]]
        buckets.append(BucketPlan(**{**b, "streams": [StreamSpec(**s) for s in b["streams"]], "ops": ops}))
    sig = data["signature"]
    return ScheduleIR(
        signature=Signature(**{**sig, "inputs": [InputSpec(**i) for i in sig["inputs"]]}),
        symbols=data["symbols"],
        constants=[ConstantSpec(**c) for c in data["constants"]],
        outputs=arg_from_json(data["outputs"]),
        buckets=buckets,
        provenance=Provenance(**data["provenance"]),
    )


# ------------------------------------------------------------------------------------- symbolic expressions

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Mod: operator.mod, ast.Pow: operator.pow, ast.Div: operator.truediv}
_CALLS = {"Max": max, "Min": min, "floor": math.floor, "ceiling": math.ceil, "FloorDiv": operator.floordiv,
          "CeilDiv": lambda a, b: -(-a // b), "Mod": operator.mod, "PythonMod": operator.mod,
          "sqrt": math.sqrt, "Abs": abs, "TruncToInt": int, "IntTrueDiv": operator.truediv}


@functools.lru_cache(maxsize=4096)
def compile_expr(text: str) -> Callable[[dict], Any]:
    """An expression string (sympy's printing of sizes) as a function of a symbol binding; no eval()."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"bad IR expression {text!r}: {e}") from None
    return _compile_node(tree, text)


def _compile_node(node: ast.AST, text: str) -> Callable[[dict], Any]:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        value = node.value
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        return lambda env: env[name]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _compile_node(node.operand, text)
        return lambda env: -inner(env)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        fn, lhs, rhs = _BINOPS[type(node.op)], _compile_node(node.left, text), _compile_node(node.right, text)
        return lambda env: fn(lhs(env), rhs(env))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        fn, parts = _CALLS[node.func.id], [_compile_node(a, text) for a in node.args]
        return lambda env: fn(*(p(env) for p in parts))
    raise ValueError(f"unsupported construct in IR expression {text!r}: {ast.dump(node)}")
