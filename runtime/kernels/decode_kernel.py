"""Grouped paged decode attention: one program per (decode token, group of HPB KV heads), for small SM budgets.

Why: `attention_kernel` gives each (token, KV head) its own program, and each program completes about one tile per
1.5-2 us, so 32 SMs cannot keep enough bytes in flight to stream the cache at HBM speed (gpu_runtime_notes.md).
Here a program reads HPB adjacent KV heads of every page at once: with HPB = Hkv a page of K is one contiguous
[PAGE * Hkv, D] block (32 KB for Llama-3-8B), so each program keeps HPB times more bytes in flight for the same
instruction count. Keys of a tile are (position, head-in-group) pairs laid out as in memory, queries are the
HPB * G heads of the group, and one 2-D dot per tile scores every query against every key; a block-diagonal mask
keeps the pairs of the same KV head (the wasted MACs are free in a memory-bound loop, as the 16-row padding of G
already is). Optional parts, chosen per config by the sweep (`benchmarks/decode_sweep.py`):
- TMA: each tile is one page loaded by a tensor descriptor over the cache viewed as [blocks * PAGE, Hkv, D]
  (a bulk copy per page instead of per-thread cp.async, fewer instructions per byte);
- persistent: grid = SM budget x programs_per_sm, each program loops over (token, group, split) work items.
Decode tokens only (single-token runs and padding, as `attention_kernel` decides them); split KV ranges are merged
by `attention_kernel._merge_kernel`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .attention_kernel import (
    CHUNK_TOKENS,
    LOG2E,
    MAX_SPLITS,
    _merge_kernel,
    _owns,
    _softmax_step,
    _store_out,
    _store_split,
)


@dataclass(frozen=True)
class DecodeConfig:
    """One launch shape of the grouped kernel. `heads_per_program` KV heads (0 = all), `tile_pages` pages a tile."""

    heads_per_program: int = 0
    tile_pages: int = 1
    num_warps: int = 4
    stages: int = 3
    tma: bool = False
    persistent: bool = False
    programs_per_sm: int = 2  # split the KV range until about this many programs per SM exist (grid if persistent)
    min_split_tokens: int = 256

    @property
    def name(self) -> str:
        kind = ("tma" if self.tma else "ptr") + ("_pers" if self.persistent else "")
        return (f"grouped_{kind}_h{self.heads_per_program or 'all'}_p{self.tile_pages}_w{self.num_warps}"
                f"_s{self.stages}_pps{self.programs_per_sm}")


def launch(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
           token_req: torch.Tensor, positions: torch.Tensor, scale: float, out: torch.Tensor, *, num_sms: int,
           config: DecodeConfig) -> None:
    """Write the `out` rows of decode tokens (single-token runs; padding gets zeros); other rows are left alone."""
    T, Hq, D = query.shape
    _, page, Hkv, _ = k_cache.shape
    if T == 0:
        return
    G = Hq // Hkv
    hpb = config.heads_per_program or Hkv
    if Hkv % hpb:
        raise ValueError(f"heads_per_program {hpb} does not divide the {Hkv} KV heads")
    tma = config.tma and _tma_ok(k_cache, v_cache)
    if tma and config.tile_pages != 1:
        raise ValueError(f"a TMA config loads one page per tile, got tile_pages={config.tile_pages}")
    groups = Hkv // hpb
    block_m = max(16, triton.next_power_of_2(hpb * G))
    block_n = config.tile_pages * page
    items = T * groups
    splits = max(1, min(MAX_SPLITS, triton.cdiv(num_sms * config.programs_per_sm, items)))
    if splits > 1:
        part_o = torch.empty((splits, T, Hq, D), device=query.device, dtype=torch.float32)
        part_lse = torch.empty((splits, T, Hq), device=query.device, dtype=torch.float32)
    else:
        part_o = part_lse = out
    tma_2d = tma and hpb == Hkv and page * Hkv <= 256  # a whole page is one [PAGE * Hkv, D] box: no reshape
    if tma:
        flat = (k_cache.shape[0] * page * Hkv, D) if tma_2d else (k_cache.shape[0] * page, Hkv, D)
        box = [page * Hkv, D] if tma_2d else [page, hpb, D]
        strides = [D, 1] if tma_2d else [Hkv * D, D, 1]
        k_desc = TensorDescriptor(k_cache.view(flat), list(flat), strides, box)
        v_desc = TensorDescriptor(v_cache.view(flat), list(flat), strides, box)
    else:
        k_desc, v_desc = k_cache, v_cache  # unused placeholders
    grid = (min(items * splits, num_sms * config.programs_per_sm),) if config.persistent else (items, splits)
    grouped_decode_kernel[grid](
        query, k_cache, v_cache, k_desc, v_desc, block_tables, token_req, positions, out, part_o, part_lse,
        T, groups, splits, triton.cdiv(config.min_split_tokens, block_n), scale * LOG2E,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        G=G, HPB=hpb, D=D, PAGE=page, BLOCK_M=block_m, TILE_PAGES=config.tile_pages,
        CHUNK=max(CHUNK_TOKENS, block_n), TMA=tma, TMA_2D=tma_2d, SPLIT=splits > 1, PERSISTENT=config.persistent,
        STAGES=config.stages, num_warps=config.num_warps, num_stages=config.stages,
    )
    if splits > 1:
        _merge_kernel[(T, Hq)](part_o, part_lse, token_req, out, T, Hq, splits, out.stride(0), out.stride(1),
                               D=D, S_PAD=triton.next_power_of_2(splits), PREFILL=False, num_warps=4)


def _tma_ok(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """TMA views the cache as [blocks * PAGE, Hkv, D]: it needs contiguous caches with 16-byte-aligned bases."""
    ok = all(c.is_contiguous() and c.data_ptr() % 16 == 0 for c in (k_cache, v_cache))
    if not ok:
        warnings.warn("grouped decode attention: KV caches are not contiguous and 16-byte aligned, so the TMA config "
                      "falls back to pointer loads", RuntimeWarning, stacklevel=3)
    return ok


@triton.jit
def grouped_decode_kernel(
    q_ptr, k_ptr, v_ptr, k_desc, v_desc, bt_ptr, req_ptr, pos_ptr, out_ptr, part_o_ptr, part_lse_ptr,
    T, groups, num_splits, min_tiles, qk_scale,
    s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_ot, s_oh,
    G: tl.constexpr, HPB: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
    TILE_PAGES: tl.constexpr, CHUNK: tl.constexpr, TMA: tl.constexpr, TMA_2D: tl.constexpr, SPLIT: tl.constexpr,
    PERSISTENT: tl.constexpr, STAGES: tl.constexpr,
):
    if PERSISTENT:
        for w in range(tl.program_id(0), T * groups * num_splits, tl.num_programs(0)):
            _attend(q_ptr, k_ptr, v_ptr, k_desc, v_desc, bt_ptr, req_ptr, pos_ptr, out_ptr, part_o_ptr,
                    part_lse_ptr, w // num_splits, w % num_splits, T, groups, num_splits, min_tiles, qk_scale,
                    s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_ot, s_oh,
                    G, HPB, D, PAGE, BLOCK_M, TILE_PAGES, CHUNK, TMA, TMA_2D, SPLIT, STAGES)
    else:
        _attend(q_ptr, k_ptr, v_ptr, k_desc, v_desc, bt_ptr, req_ptr, pos_ptr, out_ptr, part_o_ptr, part_lse_ptr,
                tl.program_id(0), tl.program_id(1), T, groups, num_splits, min_tiles, qk_scale,
                s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_ot, s_oh,
                G, HPB, D, PAGE, BLOCK_M, TILE_PAGES, CHUNK, TMA, TMA_2D, SPLIT, STAGES)


@triton.jit
def _attend(
    q_ptr, k_ptr, v_ptr, k_desc, v_desc, bt_ptr, req_ptr, pos_ptr, out_ptr, part_o_ptr, part_lse_ptr,
    item, split, T, groups, num_splits, min_tiles, qk_scale,
    s_qt, s_qh, s_kb, s_kt, s_kh, s_bt, s_ot, s_oh,
    G: tl.constexpr, HPB: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
    TILE_PAGES: tl.constexpr, CHUNK: tl.constexpr, TMA: tl.constexpr, TMA_2D: tl.constexpr, SPLIT: tl.constexpr,
    STAGES: tl.constexpr,
):
    """One work item: token `item // groups`, KV heads [g * HPB, (g + 1) * HPB), KV range share `split`."""
    BLOCK_N: tl.constexpr = TILE_PAGES * PAGE
    KN: tl.constexpr = BLOCK_N * HPB  # keys of a tile: (position, head-in-group), position-major as in memory
    t = item // groups
    grp = item % groups
    owned, req, _ = _owns(req_ptr, t, T, False)
    if owned:
        pos = tl.load(pos_ptr + t)
        ctx = tl.where(req >= 0, pos + 1, 0)
        rows = tl.arange(0, BLOCK_M)
        head = grp * (HPB * G) + rows
        store_ok = rows < HPB * G
        d = tl.arange(0, D)
        q = tl.load(q_ptr + t * s_qt + head[:, None] * s_qh + d[None, :], mask=(store_ok & (req >= 0))[:, None],
                    other=0.0)
        n_tiles = tl.cdiv(ctx, BLOCK_N)
        lo = 0
        hi = n_tiles
        if SPLIT:
            per = tl.maximum(tl.cdiv(n_tiles, num_splits), min_tiles)
            lo = tl.minimum(split * per, n_tiles)
            hi = tl.minimum(lo + per, n_tiles)
        r = tl.arange(0, KN)
        same_head = (rows // G)[:, None] == (r % HPB)[None, :]
        kv_head = grp * HPB + r % HPB
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        bt_row = bt_ptr + tl.maximum(req, 0).to(tl.int64) * s_bt
        lane = tl.arange(0, CHUNK // PAGE)
        # Block-table entries come from a register copy per CHUNK tokens (see attention_kernel: a table load in the
        # tile loop would sit on every iteration's critical path).
        for c in range(lo, hi, CHUNK // BLOCK_N):
            first_page = c * TILE_PAGES
            chunk_pages = tl.load(bt_row + first_page + lane, mask=(first_page + lane) * PAGE < ctx, other=0)
            for tile in tl.range(c, tl.minimum(c + CHUNK // BLOCK_N, hi), num_stages=STAGES):
                j = tile * BLOCK_N + r // HPB
                j_ok = j < ctx
                if TMA:
                    blk = tl.sum(tl.where(lane == tile - c, chunk_pages, 0), 0)
                    if TMA_2D:
                        k = k_desc.load([blk * KN, 0])
                        v = v_desc.load([blk * KN, 0])
                    else:
                        k = tl.reshape(k_desc.load([blk * PAGE, grp * HPB, 0]), (KN, D))
                        v = tl.reshape(v_desc.load([blk * PAGE, grp * HPB, 0]), (KN, D))
                    # Slots past the context may hold NaN, and 0 * NaN = NaN in the P @ V dot.
                    v = tl.where(j_ok[:, None], v, tl.zeros([KN, D], v.dtype))
                else:
                    pages = tl.gather(chunk_pages, j // PAGE - first_page, 0)
                    base = pages.to(tl.int64) * s_kb + (j % PAGE) * s_kt + kv_head * s_kh
                    k = tl.load(k_ptr + base[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)
                    v = tl.load(v_ptr + base[:, None] + d[None, :], mask=j_ok[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * qk_scale
                s = tl.where(same_head & j_ok[None, :], s, float("-inf"))
                m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
        if SPLIT:
            _store_split(acc, m_i, l_i, (split * T + t) * (groups * HPB * G) + head, part_o_ptr, part_lse_ptr, d,
                         store_ok, D)
        else:
            _store_out(acc, l_i, out_ptr + t * s_ot + head[:, None] * s_oh + d[None, :], out_ptr, store_ok)
