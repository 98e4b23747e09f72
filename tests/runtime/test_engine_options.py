"""The compile options an engine adds: token inputs and buckets everywhere; on CUDA the overlap threshold, overlap
off for tensor-parallel engines (said, not silent), and the plans `nanoflow search` stored for this GPU."""

from __future__ import annotations

import pytest
import torch

from nanoflow_compiler.runtime import engine_options as eo
from nanoflow_compiler.runtime.ir import NanoflowWarning

CONFIG = object()  # the model config only reaches stored_plans_db, replaced below where it matters


def test_cpu_engines_add_only_the_token_inputs_and_buckets():
    chosen = eo.engine_options({"nano_batches": 2}, torch.device("cpu"), [1, 16, 32], 1, CONFIG)
    assert chosen.options == {"nano_batches": 2, "token_inputs": eo.TOKEN_INPUTS, "token_buckets": [16, 32]}
    assert chosen.overlap_fallback is None and chosen.profile_db is None


def test_tensor_parallel_cuda_engines_fall_back_to_overlap_off_and_say_so():
    with pytest.warns(NanoflowWarning, match="nano-batched collectives hung under CUDA graphs"):
        chosen = eo.engine_options({}, torch.device("cuda"), [], 2, CONFIG)
    assert chosen.options["overlap"] is False and chosen.overlap_fallback == eo.TP_OVERLAP_FALLBACK
    assert chosen.options["min_overlap_tokens"] == eo.CUDA_MIN_OVERLAP_TOKENS and "plan" not in chosen.options
    asked = eo.engine_options({"overlap": True}, torch.device("cuda"), [], 2, CONFIG)  # the user's choice stands
    assert asked.options["overlap"] is True and asked.overlap_fallback is None


def test_one_gpu_engines_plan_from_stored_searched_plans(monkeypatch):
    from nanoflow_compiler.search import auto

    monkeypatch.setattr(auto, "stored_plans_db", lambda config: None)
    plain = eo.engine_options({}, torch.device("cuda"), [512, 1024], 1, CONFIG)
    assert "plan" not in plain.options and plain.profile_db is None and "overlap" not in plain.options
    monkeypatch.setattr(auto, "stored_plans_db", lambda config: "/cache/nanoflow/profiles/gpu.json")
    searched = eo.engine_options({}, torch.device("cuda"), [512, 1024], 1, CONFIG)
    assert searched.options["plan"] == "auto" and searched.options["profile_db"] == searched.profile_db
    given = eo.engine_options({"plan": None}, torch.device("cuda"), [512, 1024], 1, CONFIG)
    assert given.options["plan"] is None and given.profile_db is None  # a plan the user named is kept
