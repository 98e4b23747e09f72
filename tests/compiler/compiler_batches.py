"""Batches of the end-to-end compiler tests: a hand-built mixed prefill+decode batch for our Llama."""

from __future__ import annotations

import torch

from nanoflow_compiler.runtime.attention import AttnMetadata

BLOCK = 4


def mixed_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata]:
    """Two decode tokens first (requests with 6 and 3 cached tokens), then two prefill chunks of requests with
    cached prefixes (3 new tokens after 5 cached, 4 new after 2): 9 tokens, as the engine's scheduler orders them."""
    requests = [(6, 1), (3, 1), (5, 3), (2, 4)]  # (cached tokens, new tokens)
    tables = [[4 * r + b for b in range(4)] for r in range(len(requests))]
    positions, slots, token_req, last = [], [], [], []
    for r, (cached, new) in enumerate(requests):
        for p in range(cached, cached + new):
            positions.append(p)
            slots.append(tables[r][p // BLOCK] * BLOCK + p % BLOCK)
            token_req.append(r)
        last.append(len(positions) - 1)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (len(positions),), generator=gen)
    meta = AttnMetadata(torch.tensor(slots), torch.tensor(token_req, dtype=torch.int32),
                        torch.tensor(tables, dtype=torch.int32), torch.tensor(last))
    return ids, torch.tensor(positions), meta


def with_random_caches(model, num_blocks: int = 16, seed: int = 2):
    """Allocate the paged cache and fill it with the 'cached prefixes' (random K/V)."""
    model.allocate_kv_cache(num_blocks, BLOCK, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    for layer in model.layers:
        for cache in (layer.self_attn.k_cache, layer.self_attn.v_cache):
            cache.copy_(torch.randn(cache.shape, generator=gen))
    return model
