import math

import pytest
import torch

from nanoflow_compiler.runtime.attention import paged_attention_reference


def naive(query, k_cache, v_cache, block_tables, token_req, positions, scale):
    """Token by token, position by position: the definition, with nothing batched."""
    out = torch.zeros_like(query)
    bs, kvh = k_cache.shape[1], k_cache.shape[2]
    group = query.shape[1] // kvh
    for t in range(query.shape[0]):
        r = int(token_req[t])
        if r < 0:
            continue
        for h in range(query.shape[1]):
            keys, values = [], []
            for p in range(int(positions[t]) + 1):
                block = int(block_tables[r, p // bs])
                keys.append(k_cache[block, p % bs, h // group])
                values.append(v_cache[block, p % bs, h // group])
            scores = torch.stack(keys) @ query[t, h] * scale
            out[t, h] = scores.softmax(0) @ torch.stack(values)
    return out


def batch(requests, num_blocks=40, block_size=4, kv_heads=2, heads=4, head_dim=8, seed=0):
    """requests: (context length, number of query tokens at its end); padding tokens are appended too."""
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g)
    width = max(math.ceil(ctx / block_size) for ctx, _ in requests)
    tables = torch.randperm(num_blocks, generator=g)[: len(requests) * width].view(len(requests), width).int()
    token_req, positions = [], []
    for r, (ctx, n) in enumerate(requests):
        token_req += [r] * n
        positions += range(ctx - n, ctx)
    token_req += [-1, -1]
    positions += [0, 0]
    q = torch.randn(len(token_req), heads, head_dim, generator=g)
    return q, k_cache, v_cache, tables, torch.tensor(token_req, dtype=torch.int32), torch.tensor(positions)


@pytest.mark.parametrize("requests", [
    [(1, 1)],  # first decode token
    [(9, 1), (3, 1), (17, 1), (1, 1)],  # decode-only batch, ragged contexts
    [(12, 12)],  # a whole prefill
    [(10, 4), (7, 1), (20, 20), (5, 1), (13, 3)],  # chunked prefill and decode mixed
])
def test_matches_the_definition(requests):
    args = batch(requests)
    out = paged_attention_reference(*args, scale=0.3)
    ref = naive(*args, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert (out[-2:] == 0).all()  # padding tokens stay zero


def test_decode_batch_is_independent_of_its_neighbours():
    requests = [(9, 1), (30, 1), (2, 1)]
    q, kc, vc, tables, token_req, positions = batch(requests)
    together = paged_attention_reference(q, kc, vc, tables, token_req, positions, 0.3)
    for t in range(3):
        alone = paged_attention_reference(q[t : t + 1], kc, vc, tables, token_req[t : t + 1], positions[t : t + 1], 0.3)
        torch.testing.assert_close(together[t : t + 1], alone, rtol=1e-6, atol=1e-7)


def test_bfloat16_cache_computes_in_float32():
    q, kc, vc, tables, token_req, positions = batch([(6, 1), (8, 8)])
    out = paged_attention_reference(q.bfloat16(), kc.bfloat16(), vc.bfloat16(), tables, token_req, positions, 0.3)
    ref = naive(q.bfloat16().float(), kc.bfloat16().float(), vc.bfloat16().float(), tables, token_req, positions, 0.3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
