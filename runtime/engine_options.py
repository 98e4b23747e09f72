"""The `nanoflow` compile options an engine adds to the user's: which inputs carry tokens, the token buckets, overlap
only from 512 tokens on CUDA, overlap off for tensor-parallel CUDA engines (TP_OVERLAP_FALLBACK). Options the user
gave always stand; the plan itself is the backend's (the searched one where `nanoflow search` stored one for this GPU,
else overlap off)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .ir import NanoflowWarning

# The flat batch's per-token inputs: the passes split along their dim 0.
TOKEN_INPUTS = ["input_ids", "positions", "meta.slot_mapping", "meta.token_req"]
# GEMMs of M <= 256 tokens sit at or under the ridge point (~295 FLOP/B on an H100): such steps are memory-bound
# throughout, and nano-batches would only add launches.
CUDA_MIN_OVERLAP_TOKENS = 512
# Measured on 2 x H200 (torch 2.11, benchmarks/results/h200x2/README.md, session 4): one dense 1024-token iteration
# of Llama-3-8B at TP=2 under CUDA graphs ran 0.79x as fast with nano-batched collectives on their own stream as with
# one nano-batch. So a tensor-parallel engine on CUDA runs with overlap off unless asked, and says so.
TP_OVERLAP_FALLBACK = ("tensor-parallel CUDA engines run with overlap off: nano-batched collectives under CUDA graphs "
                       "ran 0.79x of one nano-batch on 2 x H200 (torch 2.11)")


@dataclass
class EngineOptions:
    """The options to compile with, and why overlap is off where the engine turned it off."""

    options: dict
    overlap_fallback: str | None = None


def engine_options(given: dict | None, device: torch.device, buckets: list[int], tp_size: int) -> EngineOptions:
    options = dict(given or {})
    options.setdefault("token_inputs", TOKEN_INPUTS)
    if buckets:  # one schedule (and one CUDA graph) per bucket the iterations are padded to
        options.setdefault("token_buckets", [b for b in buckets if b >= 2])
    if device.type != "cuda":
        return EngineOptions(options)
    options.setdefault("min_overlap_tokens", CUDA_MIN_OVERLAP_TOKENS)
    return EngineOptions(options, overlap_fallback=tp_overlap_default(options, tp_size))


def tp_overlap_default(options: dict, tp_size: int) -> str | None:
    """Turn overlap off in the options of a tensor-parallel CUDA engine that did not ask for it; says why (and warns),
    or None where nothing changed."""
    if tp_size < 2 or "overlap" in options:
        return None
    options["overlap"] = False
    warnings.warn(f"nanoflow: {TP_OVERLAP_FALLBACK}; pass compile option overlap=true to try it", NanoflowWarning,
                  stacklevel=6)
    return TP_OVERLAP_FALLBACK
