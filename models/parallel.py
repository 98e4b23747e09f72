"""Megatron-style tensor-parallel layers whose communication is written as functional collectives.

Functional collectives (`torch.distributed._functional_collectives`) trace into the graph as
`_c10d_functional.all_reduce` / `all_gather_into_tensor` nodes followed by `wait_tensor`, so that the compiler's
`classify_ops` marks them NETWORK and the schedule can overlap them with the next nano-batch's compute. With a
group of one every layer is a plain `nn.Linear` / `nn.Embedding` call and no collective enters the graph.

Each layer records, per parameter, a `ShardSpec`: which slice of the full checkpoint tensor this rank holds. The
loader and the random-weight builder use it to cut full tensors, so TP=n holds exactly the weights of TP=1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from ..runtime.distributed import TPGroup

# torch 2.13 renamed all_gather_tensor to all_gather_single; both trace to _c10d_functional.all_gather_into_tensor.
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


@dataclass(frozen=True)
class ShardSpec:
    """Where this rank's slice lies along `dim` of the full tensor.

    A fused parameter (q|k|v, gate|up) is several sections laid end to end in the full tensor; each section is
    `(full_length, start, length)` and this rank holds `[start, start + length)` of each, concatenated. A slice that
    runs past `full_length` (the padded tail of a vocabulary) is filled with zeros.
    """

    dim: int
    sections: tuple[tuple[int, int, int], ...]

    def full_shape(self, local_shape: torch.Size) -> tuple[int, ...]:
        shape = list(local_shape)
        shape[self.dim] = sum(full for full, _, _ in self.sections)
        return tuple(shape)

    def shard(self, full: torch.Tensor) -> torch.Tensor:
        expected = sum(f for f, _, _ in self.sections)
        if full.shape[self.dim] != expected:
            raise ValueError(f"tensor of shape {tuple(full.shape)} has {full.shape[self.dim]} rows on dim "
                             f"{self.dim}; the model expects {expected}")
        if all(start == 0 and length == full for full, start, length in self.sections):
            return full  # a group of one holds everything: no copy
        pieces, offset = [], 0
        for full_len, start, length in self.sections:
            kept = max(0, min(length, full_len - start))
            piece = full.narrow(self.dim, offset + start, kept)
            if kept < length:
                pad = list(full.shape)
                pad[self.dim] = length - kept
                piece = torch.cat([piece, full.new_zeros(pad)], dim=self.dim)
            pieces.append(piece)
            offset += full_len
        return torch.cat(pieces, dim=self.dim).contiguous()


def split(n: int, tp: TPGroup, what: str) -> tuple[int, int]:
    """(start, length) of this rank's equal share of `n` things."""
    if n % tp.size:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size {tp.size}")
    length = n // tp.size
    return tp.rank * length, length


def all_reduce(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    """Sum over the group; the identity (and no graph node) when the group has one rank."""
    return x if tp.size == 1 else funcol.all_reduce(x, "sum", tp.group_name)


class ColumnParallelLinear(nn.Linear):
    """Each rank computes its slice of the outputs; no communication. `sections` describe fused outputs."""

    def __init__(self, in_features: int, sections: list[tuple[int, int, int]], bias: bool):
        super().__init__(in_features, sum(length for _, _, length in sections), bias=bias)
        spec = ShardSpec(0, tuple(sections))
        self.shard_specs = {"weight": spec, "bias": spec} if bias else {"weight": spec}

    @classmethod
    def fused(cls, in_features: int, sizes: list[int], tp: TPGroup, bias: bool, what: str) -> "ColumnParallelLinear":
        """Outputs made of equal-split parts (gate|up): each rank takes its share of every part."""
        return cls(in_features, [(n, *split(n, tp, what)) for n in sizes], bias)


class RowParallelLinear(nn.Linear):
    """Each rank holds a slice of the input features; the partial products are summed by an all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPGroup, what: str):
        start, length = split(in_features, tp, what)
        super().__init__(length, out_features, bias=bias)
        self.tp = tp
        self.shard_specs = {"weight": ShardSpec(1, ((in_features, start, length),))}  # the bias is replicated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.linear(x, self.weight, self.bias)
        y = all_reduce(F.linear(x, self.weight), self.tp)
        return y if self.bias is None else y + self.bias  # added once, after the sum


def _vocab_share(vocab_size: int, tp: TPGroup) -> tuple[int, int]:
    """(start, length) of this rank's rows; the vocabulary is padded up to a multiple of the group size."""
    length = -(-vocab_size // tp.size)
    return tp.rank * length, length


class VocabParallelEmbedding(nn.Embedding):
    """Each rank holds a contiguous range of the vocabulary; ids outside it give zeros, and an all-reduce sums."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup):
        start, length = _vocab_share(vocab_size, tp)
        super().__init__(length, hidden_size)
        self.tp, self.vocab_start = tp, start
        self.shard_specs = {"weight": ShardSpec(0, ((vocab_size, start, length),))}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        inside = (local >= 0) & (local < self.num_embeddings)
        x = F.embedding(torch.where(inside, local, 0), self.weight)
        return all_reduce(x * inside.unsqueeze(-1).to(x.dtype), self.tp)


class ParallelLMHead(nn.Linear):
    """Each rank scores its vocabulary range; the logits are all-gathered along the vocabulary."""

    def __init__(self, hidden_size: int, vocab_size: int, tp: TPGroup):
        start, length = _vocab_share(vocab_size, tp)
        super().__init__(hidden_size, length, bias=False)
        self.tp, self.vocab_size = tp, vocab_size
        self.shard_specs = {"weight": ShardSpec(0, ((vocab_size, start, length),))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.weight)
        if self.tp.size == 1:
            return logits
        # Gathered along dim 0 and regrouped here: gathering along dim 1 calls a helper that Dynamo refuses to trace
        # in torch 2.11 (`_maybe_view_chunk_cat`, "marked as skipped"), which broke fullgraph compiles on the GPU.
        rows = logits.shape[0]
        gathered = _all_gather(logits, 0, self.tp.group_name).view(self.tp.size, rows, logits.shape[1])
        return gathered.transpose(0, 1).reshape(rows, -1)[:, : self.vocab_size]


def shard_specs(model: nn.Module) -> dict[str, ShardSpec]:
    """Every sharded parameter of `model` by its state-dict name; parameters not listed are replicated."""
    specs = {}
    for prefix, module in model.named_modules():
        for leaf, spec in getattr(module, "shard_specs", {}).items():
            specs[f"{prefix}.{leaf}" if prefix else leaf] = spec
    return specs


def shard_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a full (TP=1) state dict down to this rank's slices."""
    specs = shard_specs(model)
    return {name: specs[name].shard(t) if name in specs else t for name, t in state.items()}
