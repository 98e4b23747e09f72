"""SM-count-aware GEMM: a persistent Triton kernel whose grid is the SM budget and whose tile is chosen for it.

Why: cuBLAS loses ~1.5x on 80-112-SM partitions (H100.md), while a persistent TMA kernel with grid = n SMs keeps
its per-SM rate; its time follows ceil(tiles / n) rounds, so the tile is picked to make the rounds come out even
on the partition at hand (`choose_config`).

    y = sm_gemm(x, w)             # x [M, K] @ w.T, w [N, K] (nn.Linear layout), grid = the current stream's budget
    y = mm(x, w.t(), num_sms=96)  # aten.mm semantics, for executors routing mm nodes on the COMPUTE stream
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..partitions import sm_budget


@dataclass(frozen=True)
class GemmConfig:
    """Tile (bm x bn x bk), pipeline depth, warps, epilogue split in two halves (frees shared memory for stages)."""

    bm: int
    bn: int
    bk: int
    stages: int
    warps: int
    sub: bool
    efficiency: float  # measured throughput per SM relative to the best config, for the rounds model

    @property
    def name(self) -> str:
        return f"{self.bm}x{self.bn}x{self.bk}s{self.stages}w{self.warps}{'sub' if self.sub else ''}"


# Efficiencies from the H100 sweep at M=1024 (benchmarks/results/kernels.json): 128x256 with a split epilogue is the
# fastest per SM; 128x128 with 5 stages is ~5% behind but halves the tile, which evens out the rounds on partitions
# (e.g. O/down projections on 96 SMs: 256 tiles = 3 rounds of half tiles instead of 2 rounds of 128 full ones).
# Batch invariance (the `batch_invariant` compile option) rests on these sharing bk and the kernel's one sequential,
# unsplit K loop with fp32 accumulation: an output element's sum runs in the same order whatever the config, M or
# the SM budget, so configs may differ in bm/bn/stages/warps/sub only (tests/runtime/test_batch_invariant.py).
CONFIGS = (
    GemmConfig(128, 256, 64, 4, 8, True, 1.00),
    GemmConfig(128, 128, 64, 5, 8, False, 0.95),
    GemmConfig(128, 128, 64, 4, 4, False, 0.90),
    GemmConfig(64, 256, 64, 4, 4, False, 0.85),
)


@triton.jit
def _tile(tile_id, num_pid_in_group, num_pid_m, GROUP_M: tl.constexpr):
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    return first_pid_m + (tile_id % group_size_m), (tile_id % num_pid_in_group) // group_size_m


@triton.jit
def _gemm_kernel(a_desc, b_desc, c_desc, M, N, K, NPROG, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 GROUP_M: tl.constexpr, SUB: tl.constexpr):
    """C[M, N] = A[M, K] @ B[N, K]^T; program p takes tiles p, p + NPROG, ... (grouped along M for L2 reuse)."""
    start = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    tile_c = start - NPROG
    for tile_id in tl.range(start, num_tiles, NPROG, flatten=True):
        pid_m, pid_n = _tile(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BM, ki * BK])
            b = b_desc.load([pid_n * BN, ki * BK])
            acc = tl.dot(a, b.T, acc)
        tile_c += NPROG
        pid_m, pid_n = _tile(tile_c, num_pid_in_group, num_pid_m, GROUP_M)
        if SUB:
            halves = tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            c_desc.store([pid_m * BM, pid_n * BN], acc0.to(c_desc.dtype))
            c_desc.store([pid_m * BM, pid_n * BN + BN // 2], acc1.to(c_desc.dtype))
        else:
            c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


def choose_config(M: int, N: int, K: int, num_sms: int) -> GemmConfig:
    """The config with the fewest estimated SM-rounds of work: ceil(tiles / n) x tile size / efficiency."""
    def cost(c: GemmConfig) -> tuple[float, int]:
        tiles = triton.cdiv(M, c.bm) * triton.cdiv(N, c.bn)
        return triton.cdiv(tiles, num_sms) * c.bm * c.bn / c.efficiency, -c.bm * c.bn
    return min(CONFIGS, key=cost)


def sm_gemm(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor | None = None, num_sms: int | None = None,
            config: GemmConfig | None = None) -> torch.Tensor:
    """a [M, K] @ b_t[N, K]^T -> [M, N] in a's dtype (bf16/fp16), on at most `num_sms` SMs (default: the budget
    of the current stream's partition, see `partitions.sm_budget`)."""
    _check(a, b_t)
    M, K = a.shape
    N = b_t.shape[0]
    if out is None:
        out = torch.empty((M, N), device=a.device, dtype=a.dtype)
    elif out.shape != (M, N) or out.dtype != a.dtype or out.stride(1) != 1:
        raise ValueError(f"out must be a row-major [{M}, {N}] {a.dtype} tensor, got {tuple(out.shape)} {out.dtype}")
    if M == 0 or N == 0:
        return out
    num_sms = num_sms or sm_budget()
    cfg = config or choose_config(M, N, K, num_sms)
    grid = min(num_sms, triton.cdiv(M, cfg.bm) * triton.cdiv(N, cfg.bn))
    a_desc = TensorDescriptor.from_tensor(a, [cfg.bm, cfg.bk])
    b_desc = TensorDescriptor.from_tensor(b_t, [cfg.bn, cfg.bk])
    c_desc = TensorDescriptor.from_tensor(out, [cfg.bm, cfg.bn // 2 if cfg.sub else cfg.bn])
    _gemm_kernel[(grid,)](a_desc, b_desc, c_desc, M, N, K, grid, BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP_M=8,
                          SUB=cfg.sub, num_stages=cfg.stages, num_warps=cfg.warps)
    return out


def mm(a: torch.Tensor, b: torch.Tensor, num_sms: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """aten.mm(a, b) (aten.mm.out with `out`) on the SM budget: the Triton kernel when b is a transposed row-major
    weight (an nn.Linear weight's `.t()`) in bf16/fp16 with TMA-aligned strides, else torch.mm."""
    b_t = b.t()
    if (a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and b.dtype == a.dtype and a.dim() == 2
            and _tma_ok(a) and _tma_ok(b_t) and (out is None or (out.dtype == a.dtype and _tma_ok(out)))):
        return sm_gemm(a, b_t, out=out, num_sms=num_sms)
    return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)


def _tma_ok(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and (x.stride(0) * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0


def _check(a: torch.Tensor, b_t: torch.Tensor) -> None:
    if a.dim() != 2 or b_t.dim() != 2 or a.shape[1] != b_t.shape[1]:
        raise ValueError(f"sm_gemm needs a [M, K] and b_t [N, K], got {tuple(a.shape)} and {tuple(b_t.shape)}")
    if a.dtype not in (torch.bfloat16, torch.float16) or b_t.dtype != a.dtype:
        raise ValueError(f"sm_gemm supports bf16/fp16 operands of one dtype, got {a.dtype} and {b_t.dtype}")
    if not (_tma_ok(a) and _tma_ok(b_t)):
        raise ValueError("sm_gemm operands must be row-major with 16-byte-aligned rows and base pointers (TMA)")
