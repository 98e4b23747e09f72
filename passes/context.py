"""What the passes share: the compile options, the token symbol, what each pass learnt about each node, and the
warnings about regions that run unsplit (one per reason, however many nodes share it)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy

from ..runtime.ir import NanoflowWarning  # shared with the executors, which warn too

if TYPE_CHECKING:
    import networkx as nx

    from ..options import CompileOptions
    from ..runtime.ir import ScheduleIR

INFO = "nanoflow"  # node.meta key of NodeInfo


@dataclass
class InputInfo:
    """A placeholder of the lowered graph. kind: input, parameter, buffer, scalar (a number Dynamo passes as a
    0-d tensor) or symint."""

    name: str
    kind: str
    source: str  # Dynamo's source name, e.g. L['meta'].slot_mapping


@dataclass
class NodeInfo:
    shapes: list = field(default_factory=list)  # per output: tuple of sympy sizes, or None for non-tensors
    strides: list = field(default_factory=list)
    dtypes: list = field(default_factory=list)
    value: Any = None  # sympy expression of a SymInt/SymFloat result
    flops: Any = sympy.Integer(0)
    bytes: Any = sympy.Integer(0)
    cls: str = "LIGHT"
    mode: str = "whole"  # input | const | sym | host | view | alias | split | whole
    token_dims: list = field(default_factory=list)  # per output: the token dim, or None
    narrow: dict = field(default_factory=dict)  # split nodes: arg path -> dim narrowed to the nano-op's tokens
    causal: frozenset = frozenset()  # arg paths read only up to the nano-op's last token (KV caches)
    barrier: str | None = None  # why a node that touches token values runs unsplit


@dataclass
class BucketWork:
    """Per token bucket: the cut points, nano-ops, their DAG and the schedule."""

    tokens: int
    sizes: dict  # op class -> nano-batch sizes
    cuts: list
    ops: list = field(default_factory=list)  # NanoOp, in program order
    dag: "nx.DiGraph | None" = None
    reduced: "nx.DiGraph | None" = None  # device ops only, transitively reduced
    streams: list = field(default_factory=list)  # ir.StreamSpec
    order: list = field(default_factory=list)  # op ids in issue order
    predicted_s: float | None = None


@dataclass
class PassContext:
    options: "CompileOptions"
    token: Any  # sympy Symbol T (dynamic shapes) or the static token count (int)
    hints: dict  # sympy symbol -> example value, for costs
    rename: dict = field(default_factory=dict)  # Dynamo's token symbol -> T
    seeds: dict = field(default_factory=dict)  # input index -> token dim
    inputs: list = field(default_factory=list)  # InputInfo per placeholder, in order
    symbol_sources: dict = field(default_factory=dict)  # symbol name -> [[input index, dim or None], ...]
    constants: dict = field(default_factory=dict)  # get_attr target -> tensor
    graph: Any = None  # the lowered ATen GraphModule the passes annotate
    device: Any = None  # where the graph runs (of its inputs)
    values: Any = None  # split_nanobatches.Values: value names, roots and token dims
    buckets: list = field(default_factory=list)
    work: dict = field(default_factory=dict)  # bucket -> BucketWork
    notes: list = field(default_factory=list)
    plan_source: str = "analytical"
    ir: "ScheduleIR | None" = None
    module: Any = None
    _unsplit: dict = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        return isinstance(self.token, sympy.Symbol)

    def unsplit(self, node_name: str, reason: str) -> None:
        self._unsplit.setdefault(reason, []).append(node_name)

    def note(self, message: str) -> None:
        self.notes.append(message)
        warnings.warn(message, NanoflowWarning, stacklevel=2)

    def flush_warnings(self) -> None:
        """One warning per reason, naming the first nodes it applies to."""
        for reason, nodes in self._unsplit.items():
            shown = ", ".join(nodes[:4]) + (f" and {len(nodes) - 4} more" if len(nodes) > 4 else "")
            self.note(f"nanoflow: {len(nodes)} node(s) run unsplit: {reason} ({shown})")
        self._unsplit.clear()
