"""Sampling parameters and the batched sampler.

The sampler turns one iteration's logits into one token per request, on the device: greedy rows take
the argmax; the others are temperature-scaled, masked by top-k and top-p, and drawn with the exponential race
(argmax of p / E, E ~ Exp(1)), which samples exactly from p and lets each seeded request draw its noise from its own
`torch.Generator`, so a seeded request gives the same tokens whatever else shares its batch. `SampledTokens` then
copies them to the host without blocking, so that the engine can launch the next iteration (which reads them on the
device) before it waits for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .sequence import Sequence

_GREEDY_EPS = 1e-5  # temperatures below this are greedy, as in vLLM


@dataclass
class SamplingParams:
    """How to pick the tokens of one request and when to stop. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone stop string is a common, unambiguous shorthand
            self.stop = [self.stop]

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field; the engine calls this before queuing a request."""
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not (self.top_k == -1 or self.top_k >= 1):
            raise ValueError(f"top_k must be -1 (disabled) or an integer >= 1, got {self.top_k!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise ValueError(f"stop_token_ids must be a list of non-negative integers, got {self.stop_token_ids!r}")


class Sampler:
    """Samples one token per row of `logits` [R, V] float32 for the given per-row params and generators."""

    def __call__(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> list[int]:
        return self.sample(logits, params, generators).tolist()

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:
        """The tokens [R] int64, on the logits' device; nothing here waits for the device."""
        greedy_tokens = logits.argmax(dim=-1)
        if all(p.greedy for p in params):
            return greedy_tokens
        device = logits.device
        temperature = to_device([1.0 if p.greedy else p.temperature for p in params], torch.float32, device)
        logits = logits / temperature.unsqueeze(1)
        if any(p.top_k != -1 or p.top_p < 1.0 for p in params):
            top_k = to_device([p.top_k if p.top_k != -1 else logits.shape[1] for p in params], torch.int64, device)
            top_p = to_device([p.top_p for p in params], torch.float32, device)
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()  # unseeded rows: one launch on the global RNG
        for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
            if gen is not None and not p.greedy:  # a seeded row redraws from its own generator
                noise[row].exponential_(generator=gen)
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # a zero draw would turn a masked token's 0/0 into NaN
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = to_device([p.greedy for p in params], torch.bool, device)
        return torch.where(is_greedy, greedy_tokens, sampled)


class SampledTokens:
    """One iteration's sampled tokens, row i for `seqs[i]`: `tokens` stay on the device (the next iteration's
    decode rows read them there), and a copy to pinned host memory starts at once; `tolist` waits for it alone."""

    def __init__(self, seqs: list[Sequence], tokens: torch.Tensor):
        self.seqs = seqs
        self.tokens = tokens
        self.rows = {seq.request_id: i for i, seq in enumerate(seqs)}
        self._ready: torch.cuda.Event | None = None
        if tokens.is_cuda:
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._host.copy_(tokens, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = tokens

    def tolist(self) -> list[int]:
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a device tensor without waiting for the device: a copy from pageable memory (what
    `torch.tensor(values, device=...)` makes) waits for the stream to drain, one from pinned memory does not."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit outside the row's top-k and outside its top-p nucleus (the top token always stays).

    One descending sort serves both masks; the nucleus is the smallest prefix whose probability reaches top_p.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    drop = ranks >= top_k.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (mass_before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A private generator for a seeded request; None means the global RNG."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
