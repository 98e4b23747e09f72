"""Mixed prefill + decode batches for the executor tests (CPU and GPU), laid out as the engine's runner does."""

from __future__ import annotations

import torch
from nanoflow_compiler.runtime.attention import AttnMetadata

# (cached tokens, new tokens) per request: decode tokens first, then prefill chunks (one with a cached prefix)
MIXED = [(37, 1), (5, 1), (20, 1), (0, 7), (16, 9)]


def mixed_batch(vocab: int, block_size: int, device: str | torch.device = "cpu", requests=MIXED, pad: int = 2,
                seed: int = 0):
    """input_ids, positions, AttnMetadata and the number of KV blocks it needs; `pad` padding tokens at the end."""
    gen = torch.Generator().manual_seed(seed)
    width = max(-(-(c + n) // block_size) for c, n in requests)
    order = torch.randperm(len(requests) * width, generator=gen).tolist()  # scattered blocks, as after churn
    tables = [order[r * width:(r + 1) * width] for r in range(len(requests))]
    positions, slots, token_req, last = [], [], [], []
    for r, (cached, new) in enumerate(requests):
        for p in range(cached, cached + new):
            positions.append(p)
            slots.append(tables[r][p // block_size] * block_size + p % block_size)
            token_req.append(r)
        last.append(len(positions) - 1)
    positions += [0] * pad
    slots += [-1] * pad
    token_req += [-1] * pad
    ids = torch.randint(0, vocab, (len(positions),), generator=gen)
    meta = AttnMetadata(torch.tensor(slots, device=device), torch.tensor(token_req, dtype=torch.int32, device=device),
                        torch.tensor(tables, dtype=torch.int32, device=device), torch.tensor(last, device=device))
    return ids.to(device), torch.tensor(positions, device=device), meta, len(requests) * width


def fill_caches(model, num_blocks: int, block_size: int, dtype: torch.dtype, device, seed: int = 1) -> None:
    """Allocate the paged cache and fill it with random K/V: the cached prefixes of the batch's requests."""
    model.allocate_kv_cache(num_blocks, block_size, dtype, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for layer in model.layers:
        for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
            cache.copy_(torch.randn(cache.shape, generator=gen, device=device, dtype=torch.float32).to(dtype))


def caches(model) -> list[torch.Tensor]:
    return [c for layer in model.layers for c in (layer.self_attn.k_cache, layer.self_attn.v_cache)]
