"""GPU timestamps that CUDA graphs can capture on any stream (timing events cannot be read per stream inside a
graph): a one-program Triton kernel writes the global nanosecond timer when its stream reaches it. Kept apart from
gpu_timing.py, which CPU benchmarks import where triton is missing."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stamp_kernel(out_ptr, i):
    t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [i], dtype=tl.int64, is_pure=False, pack=1)
    tl.store(out_ptr + i, t)


def stamp(buf: torch.Tensor, i: int) -> None:
    """Write the GPU's global timer (ns) into buf[i] (int64) when the current stream reaches this point."""
    _stamp_kernel[(1,)](buf, i, num_warps=1)
