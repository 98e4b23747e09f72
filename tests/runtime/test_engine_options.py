"""The compile options an engine adds: token inputs and buckets everywhere; on CUDA the overlap threshold, and
overlap off for tensor-parallel engines (said, not silent)."""

from __future__ import annotations

import pytest
import torch

from nanoflow_compiler.runtime import engine_options as eo
from nanoflow_compiler.runtime.ir import NanoflowWarning


def test_cpu_engines_add_only_the_token_inputs_and_buckets():
    chosen = eo.engine_options({"nano_batches": 2}, torch.device("cpu"), [1, 16, 32], 1)
    assert chosen.options == {"nano_batches": 2, "token_inputs": eo.TOKEN_INPUTS, "token_buckets": [16, 32]}
    assert chosen.overlap_fallback is None


def test_tensor_parallel_cuda_engines_fall_back_to_overlap_off_and_say_so():
    with pytest.warns(NanoflowWarning, match="nano-batched collectives under CUDA graphs ran 0.79x"):
        chosen = eo.engine_options({}, torch.device("cuda"), [], 2)
    assert chosen.options["overlap"] is False and chosen.overlap_fallback == eo.TP_OVERLAP_FALLBACK
    assert chosen.options["min_overlap_tokens"] == eo.CUDA_MIN_OVERLAP_TOKENS
    asked = eo.engine_options({"overlap": True}, torch.device("cuda"), [], 2)  # the user's choice stands
    assert asked.options["overlap"] is True and asked.overlap_fallback is None

