"""`torch.compile(m, backend="nanoflow")` equals eager: our Llama on a mixed batch (logits and KV caches),
Hugging Face Llama, GPT-2 and Qwen2, and a plain MLP, over nano-batch counts 1-4 and uneven splits."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
import torch
import transformers
from compiler_batches import mixed_batch

from nanoflow_compiler import backend
from nanoflow_compiler.passes.context import NanoflowWarning

ATOL = 1e-5


def compile_and_capture(model, *args, options=None, dynamic=True, **kwargs):
    torch._dynamo.reset()
    with backend.capture() as compiled:
        fn = torch.compile(model, backend="nanoflow", dynamic=dynamic, fullgraph=True, options=options)
        out = fn(*args, **kwargs)
    assert len(compiled) == 1 and compiled[0].ir is not None, "the backend fell back to eager"
    return fn, out, compiled[0]


def test_registered_through_the_entry_point():
    names = [ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")]
    assert "nanoflow" in names
    assert "nanoflow" in torch._dynamo.list_backends()


@pytest.mark.parametrize("options", [
    {"nano_batches": 1},
    {"nano_batches": {"COMPUTE": 2, "MEMORY": 3}},
    {"nano_batches": 4},
    {"split": [0.1, 0.2, 0.3, 0.4]},
    {"split": {"COMPUTE": [0.7, 0.3], "MEMORY": [0.2, 0.5, 0.3]}},
    {"split": {9: {"COMPUTE": [2, 7], "MEMORY": [4, 4, 1]}}, "token_buckets": [9]},
], ids=["k1", "c2-m3", "k4", "fractions", "per-class-fractions", "boundaries"])
def test_our_llama_mixed_prefill_and_decode(llama_pair, options):
    eager, twin = llama_pair
    ids, positions, meta = mixed_batch(eager.config.vocab_size)
    before = twin.layers[0].self_attn.k_cache.clone()
    with torch.no_grad():
        expected = eager(ids, positions, meta)
        _, got, compiled = compile_and_capture(twin, ids, positions, meta, options=options)
    assert (got - expected).abs().max() < ATOL
    for a, b in zip(eager.layers, twin.layers):  # GEMMs over fewer rows may round differently: not bitwise
        assert (a.self_attn.k_cache - b.self_attn.k_cache).abs().max() < ATOL
        assert (a.self_attn.v_cache - b.self_attn.v_cache).abs().max() < ATOL
    assert not torch.equal(before, twin.layers[0].self_attn.k_cache)  # the appends happened
    ops = compiled.ir.buckets[0].ops
    assert any(op.target == "aten.mm.out" and op.seg is not None for op in ops)
    assert any(op.target == "nanoflow.paged_attention.default" and op.seg is not None for op in ops)


def test_our_llama_static_shapes_and_later_token_counts(llama_pair):
    eager, twin = llama_pair
    ids, positions, meta = mixed_batch(eager.config.vocab_size)
    with torch.no_grad():
        fn, got, _ = compile_and_capture(twin, ids, positions, meta, options={"nano_batches": 3}, dynamic=False)
        assert (got - eager(ids, positions, meta)).abs().max() < ATOL
        dyn, _, compiled = compile_and_capture(twin, ids, positions, meta, options={"nano_batches": 3})
        # the dynamic graph serves other token counts from the nearest bucket's plan: the decode tokens alone
        meta2 = type(meta)(meta.slot_mapping[:2], meta.token_req[:2], meta.block_tables[:2], torch.tensor([0, 1]))
        assert (dyn(ids[:2], positions[:2], meta2) - eager(ids[:2], positions[:2], meta2)).abs().max() < ATOL
    assert compiled.ir.signature.tokens_static is None and "T" in compiled.ir.symbols


def _hf(name: str):
    small = dict(vocab_size=96, num_hidden_layers=2, max_position_embeddings=64)
    if name == "llama":
        cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, **small)
        return transformers.LlamaForCausalLM(cfg)
    if name == "qwen2":
        cfg = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, **small)
        return transformers.Qwen2ForCausalLM(cfg)
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("name,options", [
    ("llama", {"nano_batches": {"COMPUTE": 2, "MEMORY": 4}}),
    ("gpt2", {"split": [0.25, 0.75]}),
    ("qwen2", {"nano_batches": 4}),
])
def test_hugging_face_models(name, options):
    torch.manual_seed(0)
    model = _hf(name).eval()
    ids = torch.randint(0, 96, (4, 5))  # the batch dim is the token dim: 4 rows of 5 positions
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        _, got, compiled = compile_and_capture(model, ids, use_cache=False, options=options)
    assert (got.logits - expected).abs().max() < ATOL
    assert any(op.target.startswith("aten.mm") or op.target.startswith("aten.addmm") for op in
               compiled.ir.buckets[0].ops if op.seg is not None)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_plain_mlp(k):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16),
                              torch.nn.LayerNorm(16)).eval()
    x = torch.randn(8, 16)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", NanoflowWarning)  # nothing here should run unsplit
        _, got, compiled = compile_and_capture(mlp, x, options={"nano_batches": k})
        assert (got - mlp(x)).abs().max() < ATOL
    assert len(compiled.ir.buckets[0].nano_batches["COMPUTE"]) == k


def test_a_failing_pass_falls_back_to_the_graph_with_a_warning(monkeypatch):
    from nanoflow_compiler.passes import build_dag

    def broken(gm, ctx):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(build_dag, "run", broken)
    mlp = torch.nn.Linear(4, 4)
    x = torch.randn(3, 4)
    torch._dynamo.reset()
    with backend.capture() as compiled, pytest.warns(NanoflowWarning, match="synthetic failure"):
        got = torch.compile(mlp, backend="nanoflow")(x)
    assert isinstance(compiled[0], backend.EagerFallback) and "synthetic failure" in compiled[0].reason
    torch.testing.assert_close(got, mlp(x))


def test_token_inputs_must_name_graph_inputs(llama_pair):
    _, twin = llama_pair
    ids, positions, meta = mixed_batch(twin.config.vocab_size)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"token_inputs names \['meta.slots'\].*its inputs are: input_ids, positions"):
        torch.compile(twin, backend="nanoflow", options={"token_inputs": ["input_ids", "meta.slots"]})(
            ids, positions, meta)


def test_token_inputs_pick_the_seeds(llama_pair):
    eager, twin = llama_pair
    ids, positions, meta = mixed_batch(eager.config.vocab_size)
    seeds = ["input_ids", "positions", "meta.slot_mapping", "meta.token_req"]
    with torch.no_grad():
        _, got, compiled = compile_and_capture(twin, ids, positions, meta, options={"token_inputs": seeds})
        assert (got - eager(ids, positions, meta)).abs().max() < ATOL
    assert [i.name for i in compiled.ir.signature.inputs if i.token_dim == 0] == seeds
