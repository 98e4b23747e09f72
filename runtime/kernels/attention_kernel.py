"""Paged attention kernel (Triton) shared by decode and chunked prefill, plus the split-KV merge.

One program handles one KV head for a tile of query rows, so every KV byte it reads serves all the query heads of
that group (GQA). Rows are (token, head-in-group) pairs: a decode program has one token (its G heads padded to 16
rows for the tensor cores, which costs nothing in a memory-bound loop); a prefill program has BLOCK_M // G
consecutive tokens of one request. Which program owns which token is decided on the device from `token_req` and
`positions`, so launches need no host sync and can be captured in CUDA graphs:
- decode: tokens that are alone in their request's run (and padding, which gets zeros);
- prefill: runs of two or more tokens, cut into blocks at multiples of BLOCK_M // G positions
  (positions of one request's run are consecutive, as the model runner lays them out).
Long contexts with few programs split the KV range (flash-decoding); partial results are merged by `_merge_kernel`
(never with `batch_invariant`: see `choose_splits`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
CHUNK_TOKENS = 1024  # tokens of block table held in registers at a time


@dataclass(frozen=True)
class AttnConfig:
    """Tile shape and pipelining of one launch. `block_m` rows = tokens x heads of a KV group (>= 16, >= G)."""

    block_m: int = 16
    block_n: int = 64
    num_warps: int = 4
    stages: int = 3
    programs_per_sm: int = 4  # split the KV range until about this many programs per SM of the budget exist
    min_split_tokens: int = 256  # never split a context into pieces shorter than this

    @property
    def name(self) -> str:
        return f"n{self.block_n}w{self.num_warps}s{self.stages}"

    @classmethod
    def from_name(cls, name: str) -> AttnConfig:
        """'n16w1s2' -> 16-token tiles, 1 warp, 2 stages, 16 rows: a decode config as benchmarks name it."""
        m = re.fullmatch(r"n(\d+)w(\d+)s(\d+)", name)
        if not m:
            raise ValueError(f"attention config {name!r}: expected n<tile tokens>w<warps>s<stages>, e.g. n16w1s3")
        block_n, warps, stages = map(int, m.groups())
        return cls(block_n=block_n, num_warps=warps, stages=stages)


# Decode on a large budget: 64-token tiles, 4 warps, 3 stages (~70 KB of shared memory); 0.99 of copy bandwidth on
# the whole H100 (results/h100/session5/).
DECODE = AttnConfig(block_m=16, block_n=64, num_warps=4, stages=3)
# Decode on at most SMALL_BUDGET SMs (the attention partitions of overlapped plans): few SMs must issue every
# instruction of the tile loop, and four warps splitting each softmax row cost shared-memory round trips and 10
# barriers per tile. One warp keeps a row and P in registers (2 barriers), and 16-token tiles keep ~9 programs
# resident per SM. H100, 32-SM partition, same run: 2216 GB/s against 1797 for DECODE (0.73 vs 0.59 of copy).
DECODE_SMALL = AttnConfig(block_m=16, block_n=16, num_warps=1, stages=3)
SMALL_BUDGET = 64
PREFILL = AttnConfig(block_m=64, block_n=32, num_warps=4, stages=4)


def launch(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           token_req: torch.Tensor, positions: torch.Tensor, scale: float, out: torch.Tensor, *, prefill: bool,
           num_sms: int, config: AttnConfig | None = None, batch_invariant: bool = False) -> None:
    """Write `out` rows of the tokens this kind of launch owns (decode: single-token runs and padding)."""
    T, Hq, D = query.shape
    Hkv, page = k_cache.shape[2], k_cache.shape[1]
    if T == 0:
        return
    G = Hq // Hkv
    cfg = config or (PREFILL if prefill else decode_config(num_sms, batch_invariant))
    block_m = max(cfg.block_m, triton.next_power_of_2(G))
    block_n = max(cfg.block_n, page)  # tiles start on page boundaries, so a chunk holds whole pages
    tokens_per_program = max(1, block_m // G) if prefill else 1
    programs = triton.cdiv(T, tokens_per_program) * Hkv
    splits = choose_splits(programs, num_sms, cfg, batch_invariant)
    if splits > 1:
        part_o = torch.empty((splits, T, Hq, D), device=query.device, dtype=torch.float32)
        part_lse = torch.empty((splits, T, Hq), device=query.device, dtype=torch.float32)
    else:
        part_o = part_lse = out
    paged_attn_kernel[(T * Hkv, splits)](
        query, k_cache, v_cache, block_tables, token_req, positions, out, part_o, part_lse,
        T, G, Hkv, splits, triton.cdiv(cfg.min_split_tokens, block_n), scale * LOG2E,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        D=D, PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n, CHUNK=max(CHUNK_TOKENS, block_n), PREFILL=prefill,
        SPLIT=splits > 1, STAGES=cfg.stages, WIDE=max(k_cache.numel(), v_cache.numel()) >= 2 ** 31,
        num_warps=cfg.num_warps, num_stages=cfg.stages,
    )
    if splits > 1:
        _merge_kernel[(T, Hq)](part_o, part_lse, token_req, out, T, Hq, splits, out.stride(0), out.stride(1),
                               D=D, S_PAD=triton.next_power_of_2(splits), PREFILL=prefill, num_warps=4)


def decode_config(num_sms: int, batch_invariant: bool = False) -> AttnConfig:
    """DECODE_SMALL on a budget of at most SMALL_BUDGET SMs, else DECODE. Batch-invariant: DECODE on every budget, so
    a token's result cannot depend on the partition it ran on (the tile shape sets the summation order)."""
    return DECODE_SMALL if num_sms <= SMALL_BUDGET and not batch_invariant else DECODE


def choose_splits(programs: int, num_sms: int, cfg: AttnConfig, batch_invariant: bool = False) -> int:
    """KV splits per token: enough programs for about `programs_per_sm` per SM of the budget. Batch-invariant: one,
    so a token's softmax runs over its context in one fixed tile order whatever the budget and the launch's token
    count (a split count from those would cut the context elsewhere and merge partial sums in another grouping)."""
    if batch_invariant:
        return 1
    return max(1, min(MAX_SPLITS, triton.cdiv(num_sms * cfg.programs_per_sm, programs)))


@triton.jit
def _owns(req_ptr, t, T, PREFILL: tl.constexpr):
    """Whether token t's output belongs to the decode launch (PREFILL=False) or to the prefill launch."""
    req = tl.load(req_ptr + t)
    prev = tl.load(req_ptr + t - 1, mask=t > 0, other=-2)
    nxt = tl.load(req_ptr + t + 1, mask=t + 1 < T, other=-2)
    if PREFILL:
        return (req >= 0) & ((req == prev) | (req == nxt)), req, prev
    return ((req != prev) & (req != nxt)) | (req < 0), req, prev


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc):
    """One tile of the online softmax (base 2): `s` the tile's masked scores, `v` its values. The running sums are
    rescaled only in tiles where some row's maximum moved (rarely after the first tiles of a long context): the
    rescale is a multiply per accumulator element, a sixth of a one-warp decode tile's instructions, and skipping a
    factor of exactly 1 changes no bit."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if tl.max(m_new - m_i, 0) > 0:
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha
        acc = acc * alpha[:, None]
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit
def _store_split(acc, m_i, l_i, idx, part_o_ptr, part_lse_ptr, d, store_ok, D: tl.constexpr):
    """A KV split's normalised partial output and its log-sum-exp, at row `idx` of the buffers `_merge_kernel` reads
    (an empty split stores -inf, which the merge weighs as nothing)."""
    safe_l = tl.where(l_i > 0, l_i, 1.0)
    lse = tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf"))
    tl.store(part_lse_ptr + idx, lse, mask=store_ok)
    tl.store(part_o_ptr + idx[:, None] * D + d[None, :], acc / safe_l[:, None], mask=store_ok[:, None])


@triton.jit
def _store_out(acc, l_i, dst, out_ptr, store_ok):
    """The normalised output, in the output's dtype, at the pointers `dst`."""
    safe_l = tl.where(l_i > 0, l_i, 1.0)
    tl.store(dst, (acc / safe_l[:, None]).to(out_ptr.dtype.element_ty), mask=store_ok[:, None])


@triton.jit
def paged_attn_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, req_ptr, pos_ptr, out_ptr, part_o_ptr, part_lse_ptr,
    T, G, Hkv, num_splits, min_tiles, qk_scale,
    s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_ot, s_oh,
    D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    PREFILL: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr, WIDE: tl.constexpr,
):
    # The KV heads of one token are adjacent programs: they read complementary 256-byte slices of the same cache
    # pages at about the same time (DRAM locality), instead of 8 visits to each page spread over the launch.
    t0 = tl.program_id(0) // Hkv
    kvh = tl.program_id(0) % Hkv
    split = tl.program_id(1)
    owned, req, prev = _owns(req_ptr, t0, T, PREFILL)
    pos0 = tl.load(pos_ptr + t0).to(tl.int32)  # int32 index math: a third fewer instructions per tile than int64
    rows = tl.arange(0, BLOCK_M)
    if PREFILL:
        block_q = BLOCK_M // G
        owned = owned & ((req != prev) | (pos0 % block_q == 0))
    if not owned:
        return
    if PREFILL:
        tok = t0 + rows // G
        head = kvh * G + rows % G
        in_tile = (rows < block_q * G) & (tok < T)
        r_req = tl.load(req_ptr + tok, mask=in_tile, other=-1)
        r_pos = tl.load(pos_ptr + tok, mask=in_tile, other=-1).to(tl.int32)
        row_ok = in_tile & (r_req == req) & (r_pos // block_q == pos0 // block_q)
        store_ok = row_ok
    else:
        tok = t0 + rows * 0
        head = kvh * G + rows
        store_ok = rows < G
        row_ok = store_ok & (req >= 0)
        r_pos = pos0 + rows * 0
    r_pos = tl.where(row_ok, r_pos, -1)
    ctx = tl.max(r_pos, 0) + 1

    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * s_qt + head[:, None] * s_qh + d[None, :], mask=row_ok[:, None], other=0.0)
    n_tiles = tl.cdiv(ctx, BLOCK_N)
    lo = 0
    hi = n_tiles
    if SPLIT:
        per = tl.maximum(tl.cdiv(n_tiles, num_splits), min_tiles)
        lo = tl.minimum(split * per, n_tiles)
        hi = tl.minimum(lo + per, n_tiles)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    bt_row = bt_ptr + tl.maximum(req, 0).to(tl.int64) * s_bt
    # Block-table entries come from a register copy of CHUNK tokens' worth of the table (tl.gather), not from a
    # global load per tile: a load inside the tile loop puts a memory round trip on every iteration's critical path
    # (the K/V addresses depend on it), which caps each program at ~one tile per 1.5 us and needs the whole GPU to
    # saturate HBM. With the table in registers, only the K/V copies are in the loop, STAGES-2 tiles deep.
    for c in range(lo, hi, CHUNK // BLOCK_N):
        first_page = c * (BLOCK_N // PAGE)
        pidx = first_page + tl.arange(0, CHUNK // PAGE)
        if not PREFILL:
            chunk_pages = tl.load(bt_row + pidx, mask=pidx * PAGE < ctx, other=0)
        for tile in tl.range(c, tl.minimum(c + CHUNK // BLOCK_N, hi), num_stages=STAGES):
            j = tile * BLOCK_N + offs_n
            j_ok = j < ctx
            if PREFILL:  # compute-bound loop: a table load per tile costs nothing here
                pages = tl.load(bt_row + j // PAGE, mask=j_ok, other=0)
            else:
                pages = tl.gather(chunk_pages, j // PAGE - first_page, 0)
            if WIDE:
                pages = pages.to(tl.int64)
            base = pages * s_kb + (j % PAGE) * s_kt + kvh * s_kh
            k = tl.load(k_ptr + base[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)
            v = tl.load(v_ptr + base[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            s = tl.where(j[None, :] <= r_pos[:, None], s, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)

    if SPLIT:
        _store_split(acc, m_i, l_i, (split * T + tok) * (Hkv * G) + head, part_o_ptr, part_lse_ptr, d, store_ok, D)
    else:
        _store_out(acc, l_i, out_ptr + tok[:, None] * s_ot + head[:, None] * s_oh + d[None, :], out_ptr, store_ok)


@triton.jit
def _merge_kernel(part_o_ptr, part_lse_ptr, req_ptr, out_ptr, T, H, num_splits, s_ot, s_oh,
                  D: tl.constexpr, S_PAD: tl.constexpr, PREFILL: tl.constexpr):
    """out[t, h] = softmax-weighted sum over splits of the partial outputs, for tokens this launch owns."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    owned, _, _ = _owns(req_ptr, t, T, PREFILL)
    if not owned:
        return
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D)
    idx = (s * T + t) * H + h
    lse = tl.load(part_lse_ptr + idx, mask=s < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    o = tl.load(part_o_ptr + idx[:, None] * D + d[None, :], mask=(s < num_splits)[:, None], other=0.0)
    total = tl.sum(w, 0)
    res = tl.sum(w[:, None] * o, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + t * s_ot + h * s_oh + d, res.to(out_ptr.dtype.element_ty))
