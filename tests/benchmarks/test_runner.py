"""The offline run refuses to report a throughput for a workload it did not serve whole: a context too short for the
longest request (an engine whose KV cache came out small) and a run that generated fewer tokens than asked for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nanoflow_compiler.bench.datasets import make_workload
from nanoflow_compiler.bench.runner import run_offline


class _Engine:
    """Serves every request in one step with `served` tokens each (the real engine's `step()` output shape)."""

    def __init__(self, max_model_len: int, served: int):
        self.max_model_len, self.served, self.waiting = max_model_len, served, []

    def add_request(self, request_id, prompt, params) -> None:
        self.waiting.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list:
        done, self.waiting = self.waiting, []
        return [SimpleNamespace(request_id=r, new_token_ids=[1] * self.served, finished=True) for r in done]

    def stats(self) -> dict:
        return {"num_total_blocks": self.max_model_len // 16}


WORKLOAD = make_workload("random", num_prompts=3, vocab_size=100, input_len=24, output_len=8)


def test_a_workload_longer_than_the_context_is_refused_before_the_clock_starts():
    with pytest.raises(ValueError, match=r"needs 32 tokens of context but the engine holds 16 \(max_model_len"):
        run_offline(_Engine(16, 8), WORKLOAD, ignore_eos=True, tag="t")


def test_a_run_that_generated_too_few_tokens_is_an_error_not_a_throughput():
    with pytest.raises(RuntimeError, match="generated 15 output tokens where the workload asks for 24"):
        run_offline(_Engine(64, 5), WORKLOAD, ignore_eos=True, tag="t")
    run = run_offline(_Engine(64, 8), WORKLOAD, ignore_eos=True, tag="t")
    assert run.output_tokens == 24 and run.prompt_tokens == 72
    assert run_offline(_Engine(64, 5), WORKLOAD, ignore_eos=False, tag="t").output_tokens == 15  # EOS may end early
