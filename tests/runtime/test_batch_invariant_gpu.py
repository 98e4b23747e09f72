"""The `batch_invariant` option on the GPU (bf16): kernels bitwise equal per row across SM budgets and batch sizes,
overlap on vs off bitwise-equal logits on a 2-layer Llama-3-8B-shaped model, and equal greedy tokens end to end
through benchmarks/e2e_overlap.py."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from executor_batches import caches, fill_caches, mixed_batch

from nanoflow_compiler import backend
from nanoflow_compiler.models import preset_config, random_model

pytestmark = pytest.mark.gpu
BLOCK = 16
OVERLAP = {"nano_batches": {"COMPUTE": 2, "MEMORY": 3}, "min_overlap_tokens": 1}  # default SM plan: 96/36


def test_gemm_rows_equal_across_m_and_budgets():
    from nanoflow_compiler.runtime.kernels import gemm

    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(4096, 4096, device="cuda", generator=g, dtype=torch.bfloat16)
    x = torch.randn(1024, 4096, device="cuda", generator=g, dtype=torch.bfloat16)
    rows = [gemm.mm(x[:m], w.t(), num_sms=n)[:7] for m in (7, 64, 300, 1024) for n in (132, 96, 36)]
    assert all(torch.equal(rows[0], r) for r in rows[1:])


def test_attention_token_equal_across_budgets_and_batches():
    from nanoflow_compiler.runtime.kernels import dispatch

    ids, pos, meta, blocks = mixed_batch(128, BLOCK, "cuda", requests=[(4000, 1), (37, 1), (0, 7), (16, 9)])
    g = torch.Generator(device="cuda").manual_seed(1)
    kc, vc = torch.randn(2, blocks, BLOCK, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    q = torch.randn(len(ids), 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    full = [dispatch.paged_attention(q, kc, vc, meta.block_tables, meta.token_req, pos, 0.08, num_sms=n,
                                     batch_invariant=True) for n in (132, 36, 8)]
    alone = dispatch.paged_attention(q[:1], kc, vc, meta.block_tables, meta.token_req[:1], pos[:1], 0.08,
                                     num_sms=132, batch_invariant=True)
    assert all(torch.equal(full[0], f) for f in full[1:])
    assert torch.equal(full[0][:1], alone)


def run(model, options: dict, batch, initial):
    """Compile with `options` and run one batch on the saved caches: logits and the written KV slots."""
    torch._dynamo.reset()
    ids, pos, meta = batch
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True,
                           options={"executor": "graph", "batch_invariant": True, **options})
        for cache, saved in zip(caches(model), initial):
            cache.copy_(saved)
        logits = fn(ids, pos, meta).clone()
    slots = meta.slot_mapping[meta.slot_mapping >= 0]
    assert len(compiled) == 1 and compiled[0].ir is not None, "the backend fell back or recompiled"
    assert compiled[0].ir.provenance.executor == "graph", compiled[0].ir.provenance.notes
    return logits, [c.flatten(0, 1)[slots].clone() for c in caches(model)]


def test_overlap_on_and_off_give_bitwise_equal_logits():
    torch.manual_seed(0)
    config = preset_config("llama-3-8b", num_hidden_layers=2)
    model = random_model(config, torch.bfloat16, "cuda")
    ids, pos, meta, blocks = mixed_batch(config.vocab_size, BLOCK, "cuda")
    fill_caches(model, blocks, BLOCK, torch.bfloat16, "cuda")
    initial = [c.clone() for c in caches(model)]
    off_logits, off_kv = run(model, {"overlap": False}, (ids, pos, meta), initial)
    on_logits, on_kv = run(model, OVERLAP, (ids, pos, meta), initial)
    assert torch.equal(off_logits, on_logits), (off_logits - on_logits).abs().max().item()
    assert all(torch.equal(a, b) for a, b in zip(off_kv, on_kv))


def test_e2e_greedy_tokens_equal_with_overlap_on_and_off():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import e2e_overlap

    e2e_overlap.ensure_backend()
    args = Namespace(max_num_batched_tokens=256, num_prompts=16, block_size=16, num_kv_blocks=512,
                     buckets=[64, 128, 256], dtype=torch.bfloat16, device="cuda", output_len=16, input_len=64)
    torch.manual_seed(0)
    config = preset_config("llama-3-8b", num_hidden_layers=2)
    model = random_model(config, torch.bfloat16, "cuda")
    sets = e2e_overlap.prompt_sets(2, args.num_prompts, args.input_len, config.vocab_size, seed=1)
    common = {"executor": "graph", "batch_invariant": True}
    off, off_tokens = e2e_overlap.run_config(model, "off", {"overlap": False, **common}, sets, args)
    on, on_tokens = e2e_overlap.run_config(model, "on", {**common, "min_overlap_tokens": 64}, sets, args)
    assert off["valid"] and on["valid"], (off["notes"], on["notes"], on["fallbacks"])
    greedy = e2e_overlap.compare(model, sets, off_tokens, on_tokens, args.block_size)
    assert greedy["same_greedy_tokens"], greedy["divergences"][:4]
