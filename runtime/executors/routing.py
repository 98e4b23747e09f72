"""Which kernel an mm or paged-attention step runs on CUDA: the SM-budget-aware choices, and the batch-invariant ones.

Why a module of its own: the sequential, stream and graph executors must route alike, or a token's numerics would
depend on the executor. Without `batch_invariant`, matmuls on a partition smaller than the device run the SM-aware
persistent GEMM (cuBLAS loses ~1.5x on 80-112 SMs) and everything else its own operator. With it (the compile option,
stored in the IR's provenance), every matmul runs the persistent GEMM, the full device included, and paged attention
takes one KV split per token: a token's result then depends neither on the stream's SM budget nor on the batch.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import ScheduleIR
from .program import Step

MM_TARGETS = ("aten.mm.out", "aten.mm.default")
ATTENTION_TARGET = "nanoflow.paged_attention.default"


def batch_invariant(ir: ScheduleIR) -> bool:
    """The `batch_invariant` compile option the schedule was made with (None, an unresolved default, is off)."""
    return bool(ir.provenance.options.get("batch_invariant"))


def routed(step: Step, sms: int | None, device_sms: int, invariant: bool = False) -> Callable | None:
    """The callable that runs `step` on a stream of `sms` SMs (None: the whole device)."""
    target = step.op.target
    if step.fn is None:
        return None
    if target in MM_TARGETS and (invariant or (sms is not None and sms < device_sms)):
        from ..kernels import gemm

        budget = min(sms or device_sms, device_sms)
        if target == "aten.mm.default":
            return lambda a, b: gemm.mm(a, b, num_sms=budget)
        return lambda a, b, *, out: gemm.mm(a, b, num_sms=budget, out=out)
    if target == ATTENTION_TARGET and invariant:
        from ..kernels import dispatch

        def attention(query, k_cache, v_cache, block_tables, token_req, positions, scale):
            if not query.is_cuda:  # the custom op's own CPU path: one split already
                return step.fn(query, k_cache, v_cache, block_tables, token_req, positions, scale)
            return dispatch.paged_attention(query, k_cache, v_cache, block_tables, token_req, positions, scale,
                                            batch_invariant=True)
        return attention
    return step.fn
