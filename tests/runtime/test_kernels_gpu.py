"""Triton kernels against the CPU-style reference, SDPA and cuBLAS (GPU only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanoflow_compiler.runtime.attention import paged_attention_reference

pytest.importorskip("triton", reason="the GPU kernels are Triton kernels (torch's CUDA wheels bring triton)")
from nanoflow_compiler.runtime.kernels import dispatch, gemm  # noqa: E402

pytestmark = pytest.mark.gpu


def make_batch(runs, hq, hkv, d, page, dtype, pad=0, seed=0):
    """runs: (cached_before, new_tokens) per request; its tokens are contiguous with consecutive positions."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    max_blocks = max(-(-(a + b) // page) for a, b in runs)
    nblocks = len(runs) * max_blocks + 2
    tables = torch.randperm(nblocks, device="cuda", generator=g)[: len(runs) * max_blocks]
    tables = tables.view(len(runs), max_blocks).to(torch.int32)
    kc = torch.randn(nblocks, page, hkv, d, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(nblocks, page, hkv, d, device="cuda", dtype=dtype, generator=g)
    req = [r for r, (_, b) in enumerate(runs) for _ in range(b)] + [-1] * pad
    pos = [p for a, b in runs for p in range(a, a + b)] + [0] * pad
    q = torch.randn(len(req), hq, d, device="cuda", dtype=dtype, generator=g)
    return (q, kc, vc, tables, torch.tensor(req, dtype=torch.int32, device="cuda"),
            torch.tensor(pos, dtype=torch.int64, device="cuda"))


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def sdpa_decode(q, kc, vc, tables, pos, scale):
    """Dense SDPA per request for decode-only batches (token t = request t)."""
    page, hkv, d = kc.shape[1:]
    outs = []
    for t in range(q.shape[0]):
        ctx = int(pos[t]) + 1
        blocks = tables[t, : -(-ctx // page)].long()
        k = kc[blocks].reshape(-1, hkv, d)[:ctx].transpose(0, 1)[None]
        v = vc[blocks].reshape(-1, hkv, d)[:ctx].transpose(0, 1)[None]
        outs.append(F.scaled_dot_product_attention(q[t][None, :, None], k, v, scale=scale, enable_gqa=True)[0, :, 0])
    return torch.stack(outs)


DECODE_CASES = [  # (hq, hkv, d, page, contexts)
    (8, 8, 128, 16, [1, 17, 300, 1024]),
    (32, 8, 128, 16, [1, 33, 1000, 4096]),
    (32, 4, 64, 32, [5, 64, 777, 2048]),
    (32, 8, 128, 32, [32768]),
    (16, 4, 64, 16, [32768, 3]),
]


@pytest.mark.parametrize("hq, hkv, d, page, contexts", DECODE_CASES)
@pytest.mark.parametrize("num_sms", [132, 32])
def test_decode_matches_reference_and_sdpa(hq, hkv, d, page, contexts, num_sms):
    runs = [(c - 1, 1) for c in contexts]
    q, kc, vc, tables, req, pos = make_batch(runs, hq, hkv, d, page, torch.bfloat16)
    scale = d ** -0.5
    out = dispatch.paged_attention(q, kc, vc, tables, req, pos, scale, num_sms=num_sms)
    ref = paged_attention_reference(q, kc, vc, tables, req, pos, scale)
    assert rel_err(out, ref) < 1e-2
    assert rel_err(out, sdpa_decode(q, kc, vc, tables, pos, scale)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq, hkv, d, page", [(8, 8, 64, 16), (32, 8, 128, 16), (32, 4, 128, 32), (12, 4, 64, 16)])
def test_mixed_prefill_decode_and_padding(dtype, hq, hkv, d, page):
    runs = [(0, 37), (500, 1), (64, 16), (7, 1), (1000, 70), (2047, 1)]
    q, kc, vc, tables, req, pos = make_batch(runs, hq, hkv, d, page, dtype, pad=3, seed=1)
    out = torch.ops.nanoflow.paged_attention(q, kc, vc, tables, req, pos, d ** -0.5)
    ref = paged_attention_reference(q, kc, vc, tables, req, pos, d ** -0.5)
    assert not out.isnan().any()
    assert torch.equal(out[-3:], torch.zeros_like(out[-3:]))  # padding tokens
    assert rel_err(out, ref) < 1e-2


def test_large_batch_on_a_partition_budget_takes_the_unsplit_paths():
    """Hundreds of decode tokens over two 1024-token table chunks plus a prefill chunk: with a 36-SM budget neither
    launch splits the KV range (the layer benchmark's nano-batches)."""
    g = torch.Generator().manual_seed(3)
    runs = [(int(c), 1) for c in torch.randint(900, 1100, (300,), generator=g)] + [(1008, 16)]
    q, kc, vc, tables, req, pos = make_batch(runs, 32, 8, 128, 16, torch.bfloat16, pad=2, seed=3)
    out = dispatch.paged_attention(q, kc, vc, tables, req, pos, 128 ** -0.5, num_sms=36)
    torch.cuda.synchronize()
    assert rel_err(out, paged_attention_reference(q, kc, vc, tables, req, pos, 128 ** -0.5)) < 1e-2


def test_long_prefill_chunk_splits_kv():
    q, kc, vc, tables, req, pos = make_batch([(20000, 16)], 32, 8, 128, 16, torch.bfloat16, seed=2)
    out = dispatch.paged_attention(q, kc, vc, tables, req, pos, 128 ** -0.5)
    assert rel_err(out, paged_attention_reference(q, kc, vc, tables, req, pos, 128 ** -0.5)) < 1e-2


def test_attention_replays_in_cuda_graph():
    q, kc, vc, tables, req, pos = make_batch([(100, 1), (0, 20), (300, 1)], 32, 8, 128, 16, torch.bfloat16)
    eager = dispatch.paged_attention(q, kc, vc, tables, req, pos, 0.1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dispatch.paged_attention(q, kc, vc, tables, req, pos, 0.1)
    q.copy_(torch.randn_like(q))
    graph.replay()
    assert rel_err(out, paged_attention_reference(q, kc, vc, tables, req, pos, 0.1)) < 1e-2
    assert not torch.equal(out, eager)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kv_append_matches_indexing_and_skips_padding(dtype):
    kc = torch.randn(10, 16, 8, 128, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    qkv = torch.randn(7, 48, 128, device="cuda", dtype=dtype)  # k, v are strided views as in a fused QKV
    k, v = qkv[:, 32:40], qkv[:, 40:48]
    slots = torch.tensor([3, -1, 17, 159, 0, -1, 64], device="cuda")
    kc_ref, vc_ref = kc.clone(), vc.clone()
    valid = slots >= 0
    kc_ref.view(-1, 8, 128)[slots[valid]] = k[valid]
    vc_ref.view(-1, 8, 128)[slots[valid]] = v[valid]
    torch.ops.nanoflow.kv_append(k, v, kc, vc, slots)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


def test_bad_attention_input_names_the_problem():
    q, kc, vc, tables, req, pos = make_batch([(3, 1)], 6, 4, 64, 16, torch.bfloat16)
    with pytest.raises(ValueError, match="not a multiple"):
        dispatch.paged_attention(q, kc, vc, tables, req, pos, 0.1)
    with pytest.raises(ValueError, match="share one of"):
        dispatch.paged_attention(q[:, :4].half(), kc, vc, tables, req, pos, 0.1)


LLAMA_SHAPES = [(1024, 6144, 4096), (1024, 4096, 4096), (1024, 28672, 4096), (1024, 4096, 14336)]


@pytest.mark.parametrize("m, n, k", LLAMA_SHAPES + [(17, 4096, 4096), (1000, 384, 1024), (256, 6144, 4096)])
@pytest.mark.parametrize("num_sms", [132, 96, 32])
def test_sm_gemm_matches_cublas(m, n, k, num_sms):
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    gemm.sm_gemm(a, w, out=out, num_sms=num_sms)
    assert rel_err(out, a.float() @ w.float().T) < 1e-2


@pytest.mark.parametrize("config", gemm.CONFIGS, ids=lambda c: c.name)
def test_every_gemm_config_is_correct(config):
    a = torch.randn(300, 1024, device="cuda", dtype=torch.float16)
    w = torch.randn(768, 1024, device="cuda", dtype=torch.float16) / 32
    out = gemm.sm_gemm(a, w, num_sms=20, config=config)
    assert rel_err(out, a.float() @ w.float().T) < 1e-2


def test_mm_routes_linear_weights_and_falls_back():
    a = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(gemm.mm(a, w.t(), num_sms=8), a @ w.t(), rtol=2e-2, atol=2e-1)
    b = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)  # row-major b: not a weight view -> torch.mm
    torch.testing.assert_close(gemm.mm(a, b), a @ b)
    with pytest.raises(ValueError, match="bf16/fp16"):
        gemm.sm_gemm(a.float(), w.float())
