"""Mixtral against Hugging Face's MixtralForCausalLM, and the MoE experts op (grouped GEMM, loop fallback, token-local).

TP=2 Mixtral is checked with the other tensor-parallel cases in test_parallel.py (one process launch for both).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import MixtralConfig
from transformers import MixtralForCausalLM as HFMixtral

from nanoflow_compiler.models import MixtralForCausalLM, ModelLoadError, load_model
from nanoflow_compiler.models import mixtral as mixtral_module
from nanoflow_compiler.models.loader import _build, hf_to_flat
from nanoflow_compiler.runtime.attention import AttnMetadata

CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
              sliding_window=None, bos_token_id=1, eos_token_id=2, initializer_range=0.1)
PROMPT = torch.tensor([3, 141, 59, 26, 5, 35, 89, 79, 32, 38, 46, 26])


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return HFMixtral(MixtralConfig(**CONFIG)).eval()


def _single_request(positions: torch.Tensor, logits_indices: torch.Tensor) -> AttnMetadata:
    return AttnMetadata(positions.clone(), torch.zeros(len(positions), dtype=torch.int32),
                        torch.arange(4, dtype=torch.int32)[None], logits_indices)


@torch.no_grad()
def _prompt_then_decode(model: MixtralForCausalLM, next_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every prompt position, then of one decode step that reads the prompt from the KV cache."""
    n = len(PROMPT)
    model.allocate_kv_cache(4, 16, torch.float32, "cpu")
    prompt = model(PROMPT, torch.arange(n), _single_request(torch.arange(n), torch.arange(n)))
    pos = torch.tensor([n])
    decode = model(torch.tensor([next_token]), pos, _single_request(pos, torch.tensor([0])))
    return prompt, decode


def _check_against_hf(model: MixtralForCausalLM, hf_model) -> None:
    with torch.no_grad():
        ref = hf_model(torch.cat([PROMPT, torch.tensor([7])])[None]).logits[0]
    prompt, decode = _prompt_then_decode(model, 7)
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(prompt, ref[:-1], rtol=0, atol=1e-4)
    torch.testing.assert_close(decode[0], ref[-1], rtol=0, atol=1e-4)
    assert torch.equal(prompt.argmax(-1), ref[:-1].argmax(-1))


def test_matches_hf_through_a_saved_checkpoint(hf_model, tmp_path):
    """save_pretrained writes the on-disk names (block_sparse_moe.experts.E.w1/w2/w3); the loader stacks them."""
    hf_model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded.model, MixtralForCausalLM) and loaded.source == "safetensors"
    _check_against_hf(loaded.model, hf_model)


def test_matches_hf_from_in_memory_names(hf_model):
    """transformers v5 keeps stacked experts in memory (mlp.experts.gate_up_proj); those names map straight through."""
    state = hf_model.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    _check_against_hf(_build(hf_model.config, state, torch.float32, "cpu"), hf_model)


def test_missing_expert_is_a_clear_error(hf_model, tmp_path):
    from safetensors.torch import load_file

    hf_model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    with pytest.raises(ModelLoadError, match=r"layer 1 lacks expert weights 2\.w3"):
        hf_to_flat(tensors, hf_model.config)


def _dense_reference(x, ids, weights, w_gate_up, w_down):
    """Every token through its chosen experts, one at a time: slow and obviously right."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            gate, up = F.linear(x[t], w_gate_up[ids[t, k]]).chunk(2)
            out[t] += weights[t, k] * F.linear(F.silu(gate) * up, w_down[ids[t, k]])
    return out


def _routing(num_tokens: int, hidden: int, width: int, experts: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_tokens, hidden, generator=g)
    w_gate_up = torch.randn(experts, 2 * width, hidden, generator=g) / hidden**0.5
    w_down = torch.randn(experts, hidden, width, generator=g) / width**0.5
    ids = torch.randint(0, experts - 1, (num_tokens, 2), generator=g)  # the last expert gets no token
    ids[:, 1] = (ids[:, 0] + 1) % (experts - 1)
    weights = torch.rand(num_tokens, 2, generator=g).softmax(-1)
    return x, ids, weights, w_gate_up, w_down


def test_grouped_gemm_matches_the_dense_reference():
    args = _routing(9, 32, 16)
    assert mixtral_module._grouped_mm_unsupported(args[0], args[3], args[4]) is None
    torch.testing.assert_close(torch.ops.nanoflow.moe_experts(*args), _dense_reference(*args))


def test_unaligned_shapes_fall_back_to_the_loop_and_say_so():
    args = _routing(7, 6, 10)  # 6 floats per row: not a 16-byte multiple
    mixtral_module.grouped_gemm_fallbacks.clear()
    with pytest.warns(UserWarning, match="per-expert loop"):
        out = torch.ops.nanoflow.moe_experts(*args)
    assert mixtral_module.grouped_gemm_fallbacks
    torch.testing.assert_close(out, _dense_reference(*args))


def test_experts_op_is_token_local():
    """Any split of the token range gives the same rows: what lets the compiler nano-batch the MoE block."""
    x, ids, weights, w_gate_up, w_down = _routing(10, 32, 16)
    whole = torch.ops.nanoflow.moe_experts(x, ids, weights, w_gate_up, w_down)
    parts = [torch.ops.nanoflow.moe_experts(x[s], ids[s], weights[s], w_gate_up, w_down)
             for s in (slice(0, 3), slice(3, 10))]
    torch.testing.assert_close(torch.cat(parts), whole)


def test_compiled_graph_keeps_the_experts_as_one_node(tiny_config):
    """fullgraph with a dynamic token count: routing traces as token-local ops and the experts as one op, no sort."""
    from torch._dynamo.backends.common import aot_autograd

    from nanoflow_compiler.models import random_model

    model = random_model(tiny_config("mixtral-8x7b", num_local_experts=4), torch.float32, "cpu")
    model.allocate_kv_cache(2, 16, torch.float32, "cpu")
    graphs = []
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm) or gm.forward),
                             fullgraph=True, dynamic=True)
    meta = _single_request(torch.arange(len(PROMPT)), torch.tensor([len(PROMPT) - 1]))
    with torch.no_grad():
        out = compiled(PROMPT, torch.arange(len(PROMPT)), meta)
        ref = model(PROMPT, torch.arange(len(PROMPT)), meta)
    torch.testing.assert_close(out, ref)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count("nanoflow.moe_experts.default") == 2
    assert not any("sort" in t for t in targets)
