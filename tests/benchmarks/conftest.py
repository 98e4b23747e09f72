"""A tiny Llama saved as a Hugging Face directory, so that CLI-level benchmark tests run in seconds."""

from __future__ import annotations

import pytest

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    import torch
    from transformers import LlamaForCausalLM

    from nanoflow_compiler.models import preset_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(preset_config("smollm2-135m", **TINY)).save_pretrained(path)
    return str(path)


@pytest.fixture
def script(monkeypatch):
    """Import a `benchmarks/...py` script as a module (they are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"

    def load(relative: str):
        path = root / relative
        monkeypatch.syspath_prepend(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"bench_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
