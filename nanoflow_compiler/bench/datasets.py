"""Synthetic, seeded benchmark workloads: random-token prompts with fixed or trace-shaped lengths.

Prompts are random token ids (no tokenizer needed), so that preset models with random weights can be benchmarked and
every system sees exactly the same token counts. The trace-shaped datasets draw input and output lengths from
log-normal distributions with the mean and standard deviation that the NanoFlow paper reports for each trace
(arXiv 2408.12757 v2, dataset table; traces shipped in efeslab/Nanoflow `datasets/traces/*.csv`):

    trace          input mean ± std    output mean ± std
    Splitwise      1155 ± 1109         211 ± 163
    LMSYS-Chat-1M   102 ± 169          222 ± 210
    ShareGPT        246 ± 547          322 ± 244

The Splitwise row equals the statistics of `datasets/traces/splitwise.csv` in efeslab/Nanoflow exactly
(19,366 requests). Like NanoFlow's `prepare_splitwise_data.py`, lengths are capped at 3072 input / 1024 output
tokens (and at the model's context); the distribution's location is re-solved on the drawn sample after the cap,
so that each workload's realised means are within 0.5% of the paper's. `Workload.describe()` reports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# vLLM's RandomDataset defaults, used when --input-len / --output-len are not given.
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 128
# NanoFlow's prepare_*_data.py drops requests longer than these.
MAX_TRACE_INPUT = 3072
MAX_TRACE_OUTPUT = 1024


@dataclass(frozen=True)
class LengthStats:
    input_mean: float
    input_std: float
    output_mean: float
    output_std: float
    source: str


TRACE_STATS: dict[str, LengthStats] = {
    "splitwise-like": LengthStats(1155, 1109, 211, 163, "NanoFlow paper, Splitwise trace"),
    "lmsys-like": LengthStats(102, 169, 222, 210, "NanoFlow paper, LMSYS-Chat-1M"),
    "sharegpt-like": LengthStats(246, 547, 322, 244, "NanoFlow paper, ShareGPT"),
}
DATASETS = ("random", *TRACE_STATS)


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass
class Workload:
    name: str
    requests: list[BenchRequest]
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(r.prompt_len for r in self.requests)

    @property
    def num_output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)

    def describe(self) -> dict:
        """What the JSON records about the workload: how it was made and the lengths it actually has."""
        ins = [r.prompt_len for r in self.requests]
        outs = [r.output_len for r in self.requests]
        return {
            "dataset": self.name,
            "seed": self.seed,
            "num_requests": len(self.requests),
            "total_prompt_tokens": self.num_prompt_tokens,
            "total_output_tokens": self.num_output_tokens,
            "mean_input_len": float(np.mean(ins)) if ins else 0.0,
            "mean_output_len": float(np.mean(outs)) if outs else 0.0,
            "max_input_len": max(ins, default=0),
            "max_output_len": max(outs, default=0),
            **self.params,
        }


def make_workload(
    dataset: str,
    num_prompts: int,
    vocab_size: int,
    input_len: int | None = None,
    output_len: int | None = None,
    seed: int = 0,
    max_model_len: int | None = None,
    exclude_token_ids: tuple[int, ...] = (),
) -> Workload:
    """Build `num_prompts` requests. For the trace-shaped datasets a given input/output length replaces that side of
    the distribution with a constant (vLLM's `--output-len` overrides a dataset's output lengths the same way)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if num_prompts < 1:
        raise ValueError(f"--num-prompts must be at least 1, got {num_prompts}")
    for flag, value in (("--input-len", input_len), ("--output-len", output_len)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if vocab_size <= len(set(exclude_token_ids)):
        raise ValueError(f"vocab_size {vocab_size} leaves no token ids to sample prompts from")
    rng = np.random.default_rng(seed)
    if dataset == "random":
        ins = np.full(num_prompts, input_len or DEFAULT_INPUT_LEN)
        outs = np.full(num_prompts, output_len or DEFAULT_OUTPUT_LEN)
        params: dict = {}
    else:
        stats = TRACE_STATS[dataset]
        max_in, max_out = MAX_TRACE_INPUT, MAX_TRACE_OUTPUT
        if max_model_len is not None:  # leave room for at least one output token
            max_in = min(max_in, max_model_len - 1)
            max_out = min(max_out, max_model_len - 1)
        ins = _lognormal(rng, stats.input_mean, stats.input_std, num_prompts, max_in)
        outs = _lognormal(rng, stats.output_mean, stats.output_std, num_prompts, max_out)
        if input_len is not None:
            ins = np.full(num_prompts, input_len)
        if output_len is not None:
            outs = np.full(num_prompts, output_len)
        if max_model_len is not None and input_len is None:  # trim the rare request that overflows the context
            ins = np.maximum(1, np.minimum(ins, max_model_len - outs))
        params = {"length_source": stats.source, "target_input_mean": stats.input_mean,
                  "target_output_mean": stats.output_mean}
    if max_model_len is not None:
        too_long = int(np.max(ins + outs))
        if too_long > max_model_len:
            raise ValueError(
                f"requests of {too_long} tokens (input + output) exceed the model's context of {max_model_len} tokens"
            )
    prompts = _random_tokens(rng, ins, vocab_size, exclude_token_ids)
    requests = [BenchRequest(p, int(o)) for p, o in zip(prompts, outs, strict=True)]
    return Workload(dataset, requests, seed, params)


def _lognormal(rng: np.random.Generator, mean: float, std: float, n: int, cap: int) -> np.ndarray:
    """Log-normal lengths (long-tailed, like chat traces) clipped to [1, cap], whose clipped mean is `mean`: the
    location is re-solved after clipping so that the cap trims the tail without lowering the paper's mean."""
    sigma = math.sqrt(math.log1p((std / mean) ** 2))
    z = rng.standard_normal(n)
    mu = math.log(mean) - sigma**2 / 2
    for _ in range(20):
        lengths = np.clip(np.rint(np.exp(mu + sigma * z)), 1, cap).astype(np.int64)
        realised = float(lengths.mean())
        if abs(realised - mean) < 0.005 * mean or realised >= cap:
            break
        mu += math.log(mean / realised)
    return lengths


def _random_tokens(
    rng: np.random.Generator, lengths: np.ndarray, vocab_size: int, exclude: tuple[int, ...]
) -> list[list[int]]:
    """Uniform token ids, skipping `exclude` (EOS/BOS) so that a prompt never contains a stop token."""
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(exclude, dtype=np.int64))
    return [allowed[rng.integers(0, len(allowed), int(n))].tolist() for n in lengths]
