"""Mixtral: the Llama decoder with a sparse mixture-of-experts block (top-2 of 8 experts) in place of the MLP.

Routing follows Hugging Face's `MixtralSparseMoeBlock`: router logits in the model dtype, softmax over all experts
in float32, top-k, then the k weights renormalised to sum to one.

The experts run as one custom op, `nanoflow::moe_experts`, rather than as traced ATen ops. Why: grouping tokens by
expert needs a sort over the whole batch and data-dependent group sizes; traced, the sort is a barrier that stops
nano-batch splitting, and the group sizes are unbacked shapes that break `fullgraph=True` with dynamic token counts.
As one op the block is token-local (output row t depends only on input row t and its routing), tokens stay at dim 0
of every argument, and the compiler splits it like any other per-token op and counts it as COMPUTE. Inside, tokens
are sorted by expert and both expert GEMMs run as grouped GEMMs (`torch._grouped_mm`); where that kernel cannot run
(unaligned shapes, CUDA without bf16 on sm90+) a loop over the experts' token ranges computes the same thing.

Tensor parallelism splits every expert's intermediate dimension across ranks (each rank holds all experts, thinner);
the router is replicated and the block's output is all-reduced, like a row-parallel linear.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.distributed import TPGroup
from .llama import LlamaForCausalLM
from .parallel import ShardSpec, all_reduce, split

# Why the grouped GEMM was not used, once per reason; benchmarks report it so that a slow fallback is never silent.
grouped_gemm_fallbacks: set[str] = set()


def _grouped_mm_unsupported(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> str | None:
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    if x.is_cuda and (x.dtype != torch.bfloat16 or torch.cuda.get_device_capability(x.device) < (9, 0)):
        return f"grouped GEMM on CUDA needs bf16 on sm90+, got {x.dtype}"
    if any((n * x.element_size()) % 16 for n in (w_gate_up.shape[2], w_down.shape[2], w_down.shape[1])):
        return f"grouped GEMM needs rows of 16-byte multiples; hidden/intermediate sizes {tuple(w_down.shape[1:])}"
    return None


def _experts_loop(x: torch.Tensor, counts: list[int], w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    out, start = [], 0
    for e, n in enumerate(counts):
        gate, up = F.linear(x[start:start + n], w_gate_up[e]).chunk(2, dim=-1)
        out.append(F.linear(F.silu(gate) * up, w_down[e]))
        start += n
    return torch.cat(out)


@torch.library.custom_op("nanoflow::moe_experts", mutates_args=())
def moe_experts(
    hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(hidden[t]), a SwiGLU expert with weights [E, 2I, H] / [E, H, I]."""
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = flat.argsort(stable=True)
    token_of = order // top_k
    counts = torch.bincount(flat, minlength=w_gate_up.shape[0])
    x = hidden[token_of]
    reason = _grouped_mm_unsupported(x, w_gate_up, w_down)
    if reason is None:
        offs = counts.cumsum(0).to(torch.int32)
        gate, up = torch._grouped_mm(x, w_gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
        y = torch._grouped_mm(F.silu(gate) * up, w_down.transpose(1, 2), offs=offs)
    else:
        if reason not in grouped_gemm_fallbacks:
            grouped_gemm_fallbacks.add(reason)
            warnings.warn(f"MoE experts run as a per-expert loop: {reason}", stacklevel=2)
        y = _experts_loop(x, counts.tolist(), w_gate_up, w_down)
    weighted = y.float() * topk_weights.reshape(-1)[order, None].float()
    out = torch.zeros(num_tokens, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    return out.index_add_(0, token_of, weighted).to(hidden.dtype)


@moe_experts.register_fake
def _(hidden, topk_ids, topk_weights, w_gate_up, w_down) -> torch.Tensor:
    return torch.empty_like(hidden)


class Experts(nn.Module):
    """All experts' SwiGLU weights as two 3-D tensors (Hugging Face v5 layout), split on the intermediate dim."""

    def __init__(self, config, tp: TPGroup):
        super().__init__()
        width, hidden, num = config.intermediate_size, config.hidden_size, config.num_local_experts
        start, length = split(width, tp, "intermediate_size")
        self.gate_up_proj = nn.Parameter(torch.empty(num, 2 * length, hidden))
        self.down_proj = nn.Parameter(torch.empty(num, hidden, length))
        self.shard_specs = {
            "gate_up_proj": ShardSpec(1, ((width, start, length),) * 2),
            "down_proj": ShardSpec(2, ((width, start, length),)),
        }


class SparseMoeBlock(nn.Module):
    def __init__(self, config, tp: TPGroup):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"Mixtral experts support hidden_act 'silu', not {config.hidden_act!r}")
        self.top_k, self.tp = config.num_experts_per_tok, tp
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = Experts(config, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.gate(x).float().softmax(dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.ops.nanoflow.moe_experts(x, ids, weights, self.experts.gate_up_proj, self.experts.down_proj)
        return all_reduce(out, self.tp)


class MixtralForCausalLM(LlamaForCausalLM):
    """Same contract as `LlamaForCausalLM` (forward, KV cache, loading); only the MLP differs."""

    mlp_class = SparseMoeBlock
