"""Paged attention as two `torch.library` custom ops, so that Dynamo and our passes see each as one node.

Layout (shared by the CPU reference here and the Triton kernels in `kernels/`):
- KV cache of one layer: `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads, head_dim].
- `slot_mapping[T]` (int64): where token t's key/value go, `block * block_size + offset`; -1 marks padding.
- `block_tables[R, max_blocks]` (int32): the cache blocks of each request of the batch.
- `token_req[T]` (int32): the row of `block_tables` that token t belongs to; -1 marks padding.
- `positions[T]` (int64): token t attends to cache positions 0..positions[t] of its request.

Every argument that has a token dimension has it at dim 0 and attention is per query token, so any split of the
token range is valid once the keys of earlier tokens are in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch



@dataclass
class AttnMetadata:
    """Per-iteration batch description the model runner builds; every per-token tensor has tokens at dim 0."""

    slot_mapping: torch.Tensor
    token_req: torch.Tensor
    block_tables: torch.Tensor
    logits_indices: torch.Tensor

    def to(self, device: torch.device | str) -> "AttnMetadata":
        return AttnMetadata(*(t.to(device, non_blocking=True) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.slot_mapping, self.token_req, self.block_tables, self.logits_indices)


@torch.library.custom_op("nanoflow::kv_append", mutates_args=("k_cache", "v_cache"))
def kv_append(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write each token's key and value into its cache slot (padding slots, -1, are skipped)."""
    if key.is_cuda:
        from .kernels import dispatch

        return dispatch.kv_append(key, value, k_cache, v_cache, slot_mapping)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = key[valid].to(k_cache.dtype)
    v_cache[blocks, offsets] = value[valid].to(v_cache.dtype)


@kv_append.register_fake
def _(key, value, k_cache, v_cache, slot_mapping) -> None:
    return None


@torch.library.custom_op("nanoflow::paged_attention", mutates_args=())
def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_req: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each query token over its own request's cached keys, up to its own position."""
    if query.is_cuda:
        from .kernels import dispatch

        return dispatch.paged_attention(query, k_cache, v_cache, block_tables, token_req, positions, scale)
    return paged_attention_reference(query, k_cache, v_cache, block_tables, token_req, positions, scale)


@paged_attention.register_fake
def _(query, k_cache, v_cache, block_tables, token_req, positions, scale) -> torch.Tensor:
    return torch.empty_like(query)


def paged_attention_reference(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_req: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Plain PyTorch, one request at a time: gathers the request's blocks and runs a masked softmax in float32."""
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(query)
    for req in torch.unique(token_req).tolist():
        if req < 0:
            continue
        rows = (token_req == req).nonzero().squeeze(1)
        pos = positions[rows]
        ctx = int(pos.max()) + 1
        blocks = block_tables[req, : (ctx + block_size - 1) // block_size].long()
        k = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        v = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        q = query[rows].float()
        scores = torch.einsum("thd,chd->htc", q, k) * scale
        mask = torch.arange(ctx, device=query.device)[None, :] > pos[:, None]
        scores.masked_fill_(mask[None], float("-inf"))
        out[rows] = torch.einsum("htc,chd->thd", scores.softmax(-1), v).to(query.dtype)
    return out
