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

    def to(self, device: torch.device | str) -> AttnMetadata:
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
    """Plain PyTorch in float32. Requests with one query token in the batch (decode) run together as one padded
    batch, which keeps decode-heavy batches to a handful of ops; each longer request (a prefill chunk) runs alone."""
    num_kv_heads = k_cache.shape[2]
    out = torch.zeros_like(query)
    valid = token_req >= 0
    req = token_req.long().clamp(min=0)
    counts = torch.bincount(req[valid], minlength=block_tables.shape[0])
    decode_rows = (valid & (counts[req] == 1)).nonzero().squeeze(1)
    if decode_rows.numel():
        out[decode_rows] = _decode_attention(query[decode_rows], k_cache, v_cache, block_tables[req[decode_rows]],
                                             positions[decode_rows], scale).to(query.dtype)
    for r in (counts > 1).nonzero().squeeze(1).tolist():
        rows = (token_req == r).nonzero().squeeze(1)
        pos = positions[rows]
        k, v = _gather(k_cache, v_cache, block_tables[r : r + 1], int(pos.max()) + 1)
        q = query[rows].float().unflatten(1, (num_kv_heads, -1))  # [n, kv_heads, group, d]: GQA without copies
        scores = torch.einsum("nkgd,ckd->kgnc", q, k[0]) * scale
        scores.masked_fill_(_future(pos, k.shape[1]).unsqueeze(0).unsqueeze(0), float("-inf"))
        o = torch.einsum("kgnc,ckd->nkgd", scores.softmax(-1), v[0])
        out[rows] = o.flatten(1, 2).to(query.dtype)
    return out


_DECODE_CHUNK_BYTES = 4 << 20  # padded keys+values per decode chunk: small chunks stay in cache and pad less


def _decode_attention(q, k_cache, v_cache, tables, pos, scale) -> torch.Tensor:
    """One query token per row; rows sorted by context length and chunked so that padding and memory stay small."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    order = pos.argsort()
    pos_sorted = pos[order].tolist()
    per_row = 2 * 4 * num_kv_heads * head_dim * (pos_sorted[-1] + 1)
    chunk = max(1, _DECODE_CHUNK_BYTES // per_row)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for start in range(0, len(pos_sorted), chunk):
        idx = order[start : start + chunk]
        k, v = _gather(k_cache, v_cache, tables[idx], pos_sorted[min(start + chunk, len(pos_sorted)) - 1] + 1)
        qc = q[idx].float().unflatten(1, (num_kv_heads, -1))  # [n, kv_heads, group, d]
        scores = torch.einsum("nkgd,nckd->nkgc", qc, k) * scale
        scores.masked_fill_(_future(pos[idx], k.shape[1])[:, None, None, :], float("-inf"))
        out[idx] = torch.einsum("nkgc,nckd->nkgd", scores.softmax(-1), v).flatten(1, 2)
    return out


def _gather(k_cache, v_cache, tables, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of positions 0..ctx-1 for each row of `tables`, as float32 [rows, ctx, kv_heads, d]."""
    block_size = k_cache.shape[1]
    blocks = tables[:, : (ctx + block_size - 1) // block_size].long()
    k = k_cache[blocks].flatten(1, 2)[:, :ctx].float()
    v = v_cache[blocks].flatten(1, 2)[:, :ctx].float()
    return k, v


def _future(pos: torch.Tensor, ctx: int) -> torch.Tensor:
    """[n, ctx] mask of the cache positions after each query token's own."""
    return torch.arange(ctx, device=pos.device)[None, :] > pos[:, None]
