"""KV append: one program per token copies its keys and values (all KV heads) into the token's cache slot."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_append_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, page_size, H,
                      s_kt, s_kh, s_vt, s_vh, s_cb, s_ct, s_ch,
                      D: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    if slot < 0:  # padding token
        return
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, D)[None, :]
    mask = h < H
    dst = (slot // page_size).to(tl.int64) * s_cb + (slot % page_size) * s_ct + h * s_ch + d
    k = tl.load(k_ptr + t * s_kt + h * s_kh + d, mask=mask)
    v = tl.load(v_ptr + t * s_vt + h * s_vh + d, mask=mask)
    tl.store(kc_ptr + dst, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptr + dst, v.to(vc_ptr.dtype.element_ty), mask=mask)


def kv_append(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
    """Write key/value [T, Hkv, D] into caches [blocks, block_size, Hkv, D] at `slot_mapping` (-1 skipped)."""
    T, H, D = key.shape
    if T == 0:
        return
    _kv_append_kernel[(T,)](
        key, value, k_cache, v_cache, slot_mapping, k_cache.shape[1], H,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        D=D, BLOCK_H=triton.next_power_of_2(H), num_warps=4,
    )
