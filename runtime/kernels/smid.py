"""Which SMs a stream's kernels land on: a Triton kernel whose programs record `%smid` (partition checks)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _smid_kernel(out_ptr, SPIN: tl.constexpr):
    pid = tl.program_id(0)
    acc = pid.to(tl.float32)
    for _ in range(SPIN):  # a little work, so that programs stay resident long enough to spread over the SMs
        acc = acc * 1.000001 + 1.0
    smid = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32, is_pure=False, pack=1)
    tl.store(out_ptr + pid, tl.where(acc >= 0, smid, -1))


def sm_ids(stream: torch.cuda.Stream, programs: int = 8192) -> set[int]:
    """The set of SM ids that `programs` programs launched on `stream` ran on (synchronizes the stream)."""
    out = torch.full((programs,), -1, dtype=torch.int32, device=stream.device)
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        _smid_kernel[(programs,)](out, SPIN=2000, num_warps=1)
    stream.synchronize()
    return set(out.tolist()) - {-1}
