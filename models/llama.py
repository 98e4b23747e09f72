"""The Llama family (Llama 2/3/3.1, Mistral, SmolLM2, Qwen2) in the flat-token form.

`forward(input_ids[T], positions[T], meta)` takes every token of the iteration, prefill and decode alike, as one
flat batch: the token dimension is dim 0 of every activation, so that each linear, norm and activation splits into
nano-batches by narrowing dim 0. Attention goes through `nanoflow::kv_append` and `nanoflow::paged_attention`.
Configs are Hugging Face `PretrainedConfig`s, read as they are. Under tensor parallelism (`runtime.distributed`)
heads and the MLP width are split across ranks (`models.parallel`); with one rank the layers are plain linears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.attention import AttnMetadata
from ..runtime.distributed import TPGroup, get_tp
from .parallel import ColumnParallelLinear, ParallelLMHead, RowParallelLinear, VocabParallelEmbedding, split


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


def _kv_head_share(num_kv_heads: int, tp: TPGroup) -> tuple[int, int]:
    """(first, count) of this rank's KV heads; with fewer KV heads than ranks each rank keeps a copy of one."""
    if num_kv_heads % tp.size == 0:
        return split(num_kv_heads, tp, "num_key_value_heads")
    if tp.size % num_kv_heads == 0:
        return tp.rank // (tp.size // num_kv_heads), 1
    raise ValueError(f"num_key_value_heads ({num_kv_heads}) and the tensor-parallel size ({tp.size}) must divide "
                     "one another")


class Attention(nn.Module):
    """Self-attention over this rank's heads (all of them with one rank): the attention itself needs no traffic."""

    def __init__(self, config, head_dim: int, tp: TPGroup):
        super().__init__()
        q_start, self.num_heads = split(config.num_attention_heads, tp, "num_attention_heads")
        kv_start, self.num_kv_heads = _kv_head_share(config.num_key_value_heads, tp)
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
        q_full, kv_full = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
        q = (q_full, q_start * head_dim, self.num_heads * head_dim)
        kv = (kv_full, kv_start * head_dim, self.num_kv_heads * head_dim)
        self.qkv_proj = ColumnParallelLinear(config.hidden_size, [q, kv, kv], bias=bias)
        self.o_proj = RowParallelLinear(
            q_full, config.hidden_size, getattr(config, "attention_bias", False), tp, "num_attention_heads * head_dim"
        )
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
    def __init__(self, config, tp: TPGroup):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        width = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear.fused(config.hidden_size, [width, width], tp, bias, "intermediate_size")
        self.down_proj = RowParallelLinear(width, config.hidden_size, bias, tp, "intermediate_size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config, head_dim: int, tp: TPGroup, mlp_class: type[nn.Module]):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, head_dim, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp_class(config, tp)

    def forward(self, x, positions, cos, sin, meta):
        x = x + self.self_attn(self.input_layernorm(x), positions, cos, sin, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head; returns logits only for the tokens `meta.logits_indices` names (last of each request).

    `tp` defaults to the group this process joined (`runtime.distributed.get_tp()`); each rank then holds its slice.
    """

    mlp_class: type[nn.Module] = MLP  # Mixtral swaps in its sparse MoE block

    def __init__(self, config, tp: TPGroup | None = None):
        super().__init__()
        self.config = config
        self.tp = tp = tp or get_tp()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(
            DecoderLayer(config, head_dim, tp, self.mlp_class) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, tp)
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
