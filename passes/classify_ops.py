"""Pass 2: the resource each node uses most, which decides its stream and its nano-batch count.

COMPUTE: dense GEMMs. MEMORY: attention over the KV cache and KV writes. NETWORK: collectives. LIGHT: everything
else (norms, activations, rope, residual adds), which runs on the COMPUTE stream. The registry is keyed by op name:
`ns.op.overload`, `ns.op` (all overloads) or `ns.*` (a whole namespace); `register_op_class` extends it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..runtime.ir import COMPUTE, LIGHT, MEMORY, NETWORK, OP_CLASSES
from .context import INFO, PassContext

_REGISTRY: dict[str, str] = {
    **{f"aten.{op}": COMPUTE for op in ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm", "_int_mm", "convolution",
                                        "_grouped_mm", "_scaled_grouped_mm")},
    **{f"aten.{op}": MEMORY for op in ("_scaled_dot_product_flash_attention_for_cpu",
                                       "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                                       "_scaled_dot_product_cudnn_attention", "scaled_dot_product_attention",
                                       "_scaled_dot_product_fused_attention_overrideable")},
    "nanoflow.paged_attention": MEMORY,
    "nanoflow.kv_append": MEMORY,
    "_c10d_functional.*": NETWORK,
    "c10d.*": NETWORK,
    "c10d_functional.*": NETWORK,
}


def register_op_class(op: Any, cls: str) -> None:
    """Classify `op` (an OpOverload/OpOverloadPacket or a name like 'mylib.gemm') as `cls`."""
    if cls not in OP_CLASSES:
        raise ValueError(f"unknown op class {cls!r}; valid classes: {', '.join(OP_CLASSES)}")
    if isinstance(op, torch._ops.OpOverload):
        op = op_name(op)
    elif isinstance(op, torch._ops.OpOverloadPacket):
        op = op._qualified_op_name.replace("::", ".")
    _REGISTRY[op] = cls


def op_name(target: Any) -> str:
    """'aten.mm.default' for an OpOverload, 'py:operator.mul' for a Python function."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    module = getattr(target, "__module__", None) or "builtins"
    module = {"_operator": "operator", "torch.fx.experimental.sym_node": "torch"}.get(module, module)
    return f"py:{module}.{getattr(target, '__name__', repr(target))}"


def op_class(target: Any) -> str:
    if not isinstance(target, torch._ops.OpOverload):
        return LIGHT
    full = op_name(target)
    packet = full.rpartition(".")[0]
    return _REGISTRY.get(full) or _REGISTRY.get(packet) or _REGISTRY.get(f"{target.namespace}.*") or LIGHT


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.meta[INFO].cls = op_class(node.target)
    return gm
