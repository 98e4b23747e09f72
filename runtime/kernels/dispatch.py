"""CUDA implementations behind `nanoflow::kv_append` and `nanoflow::paged_attention` (see runtime/attention.py).

Paged attention issues two launches with no host sync (so it captures into CUDA graphs): the decode kernel owns
tokens that are alone in their request's run (and padding), the prefill kernel owns runs of two or more tokens
(chunked prefill, causal over the cached prefix and the chunk). Both size their grids from the SM budget of the
current stream's partition.
"""

from __future__ import annotations

import torch

from ..partitions import sm_budget
from . import attention_kernel
from .kv_append import kv_append as _kv_append


def kv_append(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
    """Write each token's key/value into its cache slot; slot -1 (padding) is skipped."""
    if key.shape != value.shape or key.dim() != 3:
        raise ValueError(f"key and value must both be [T, Hkv, D], got {tuple(key.shape)} and {tuple(value.shape)}")
    _check_caches(k_cache, v_cache)
    if key.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"key heads/dim {tuple(key.shape[1:])} do not match the cache's {tuple(k_cache.shape[2:])}")
    if slot_mapping.shape != key.shape[:1]:
        raise ValueError(f"slot_mapping must be [{key.shape[0]}], got {tuple(slot_mapping.shape)}")
    if key.stride(2) != 1 or value.stride(2) != 1:
        raise ValueError("key and value need a contiguous head dimension")
    _kv_append(key, value, k_cache, v_cache, slot_mapping)


def paged_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    token_req: torch.Tensor, positions: torch.Tensor, scale: float,
                    num_sms: int | None = None, batch_invariant: bool = False,
                    decode_config: attention_kernel.AttnConfig | None = None) -> torch.Tensor:
    """Each token attends to its request's cache positions 0..positions[t]; padding tokens (token_req -1) get 0.
    `batch_invariant`: one KV split per token, so its result depends on neither the SM budget nor the batch.
    `decode_config`: the decode launch's tiles (None: the budget's default, `attention_kernel.decode_config`)."""
    _check_attention(query, k_cache, v_cache, block_tables, token_req, positions)
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    budget = num_sms or sm_budget()
    for prefill in (False, True):
        attention_kernel.launch(query, k_cache, v_cache, block_tables, token_req, positions, scale, out,
                                prefill=prefill, num_sms=budget, config=None if prefill else decode_config,
                                batch_invariant=batch_invariant)
    return out


def decode_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     token_req: torch.Tensor, positions: torch.Tensor, scale: float, num_sms: int | None = None,
                     config: attention_kernel.AttnConfig | None = None) -> torch.Tensor:
    """The decode launch alone, for batches known to hold only single-token runs (benchmarks, decode nano-ops);
    `config` None takes the budget's default (`attention_kernel.decode_config`)."""
    _check_attention(query, k_cache, v_cache, block_tables, token_req, positions)
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    attention_kernel.launch(query, k_cache, v_cache, block_tables, token_req, positions, scale, out, prefill=False,
                            num_sms=num_sms or sm_budget(), config=config)
    return out


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(f"k_cache and v_cache must be equal-layout [blocks, block_size, Hkv, D] tensors, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.stride(3) != 1:
        raise ValueError("the KV cache needs a contiguous head dimension")
    page = k_cache.shape[1]
    if page & (page - 1) or not 8 <= page <= 1024:
        raise ValueError(f"KV block size {page} must be a power of two in [8, 1024] for the Triton kernels")


def _check_attention(query, k_cache, v_cache, block_tables, token_req, positions) -> None:
    _check_caches(k_cache, v_cache)
    if query.dim() != 3 or query.stride(2) != 1:
        raise ValueError(f"query must be [T, Hq, D] with a contiguous last dim, got {tuple(query.shape)}")
    T, Hq, D = query.shape
    Hkv = k_cache.shape[2]
    if D != k_cache.shape[3] or D & (D - 1) or D < 16:
        raise ValueError(f"head_dim {D} must match the cache ({k_cache.shape[3]}) and be a power of two >= 16")
    if Hq % Hkv:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} KV heads")
    if query.dtype != k_cache.dtype or query.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"query {query.dtype} and cache {k_cache.dtype} must share one of bf16/fp16/fp32")
    if token_req.shape != (T,) or positions.shape != (T,):
        raise ValueError(f"token_req and positions must be [{T}], got {tuple(token_req.shape)} and "
                         f"{tuple(positions.shape)}")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError(f"block_tables must be a row-major [R, max_blocks] tensor, got {tuple(block_tables.shape)}")
