"""The Llama family (Llama 2/3/3.1, Mistral, SmolLM2, Qwen2) in the flat-token form.

`forward(input_ids[T], positions[T], meta)` takes every token of the iteration, prefill and decode alike, as one
flat batch: the token dimension is dim 0 of every activation, so that each linear, norm and activation splits into
nano-batches by narrowing dim 0. Attention goes through `nanoflow::kv_append` and `nanoflow::paged_attention`.
Configs are Hugging Face `PretrainedConfig`s, read as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.attention import AttnMetadata


def _rope_parameters(config) -> dict:
    """Rope settings across transformers versions (v5 `rope_parameters`, v4 `rope_scaling` + `rope_theta`)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def rope_cache(config, head_dim: int) -> torch.Tensor:
    """cos|sin table [max_positions, head_dim] in float32; scaled variants come from transformers' rope functions."""
    params = _rope_parameters(config)
    if params["rope_type"] == "default":
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        scaling = 1.0
    else:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, torch.device("cpu"))
    t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq.float())
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rope, as Hugging Face Llama does it (not the interleaved GPT-J form)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, head_dim: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
        self.qkv_proj = nn.Linear(config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * head_dim, config.hidden_size, bias=getattr(config, "attention_bias", False))
        self.register_buffer("k_cache", torch.empty(0, 1, self.num_kv_heads, head_dim), persistent=False)
        self.register_buffer("v_cache", torch.empty(0, 1, self.num_kv_heads, head_dim), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttnMetadata):
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(-1, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(-1, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        torch.ops.nanoflow.kv_append(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        o = torch.ops.nanoflow.paged_attention(
            q, self.k_cache, self.v_cache, meta.block_tables, meta.token_req, positions, self.scale
        )
        return self.o_proj(o.view(-1, q_size))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config, head_dim: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, head_dim)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, cos, sin, meta):
        x = x + self.self_attn(self.input_layernorm(x), positions, cos, sin, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head; returns logits only for the tokens `meta.logits_indices` names (last of each request)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, head_dim) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope", rope_cache(config, head_dim), persistent=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope[positions].to(x.dtype).unsqueeze(1).chunk(2, dim=-1)
        for layer in self.layers:
            x = layer(x, positions, cos, sin, meta)
        return self.lm_head(self.norm(x)[meta.logits_indices]).float()

    def allocate_kv_cache(self, num_blocks: int, block_size: int, dtype: torch.dtype, device) -> None:
        """Give every layer its paged cache; the runner sizes `num_blocks` from free memory."""
        for layer in self.layers:
            attn = layer.self_attn
            shape = (num_blocks, block_size, attn.num_kv_heads, attn.head_dim)
            attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        attn = self.layers[0].self_attn
        return 2 * len(self.layers) * attn.num_kv_heads * attn.head_dim * torch.empty(0, dtype=dtype).element_size()
