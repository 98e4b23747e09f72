"""Helpers of the artifact tests: a small model with tied embeddings, hard-link clones and in-place-safe edits.

Tests that damage an artifact work on `clone()`s: hard links, so the 540 MB weights are not copied; a damaged file is
always written anew (unlinked first), never changed in place, so the shared artifact stays intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from nanoflow_compiler import SamplingParams

SMOL_BUCKETS = [16, 64]
SMOL_ENGINE = dict(token_buckets=SMOL_BUCKETS, max_num_batched_tokens=64, num_kv_blocks=64)
PROMPTS = ["The capital of France is"]
CHAT = [{"role": "user", "content": "Name three colors."}]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
TINY_ENGINE = dict(token_buckets=[8, 32], max_num_batched_tokens=32, num_kv_blocks=16)


def prompt_ids(tokenizer) -> list[list[int]]:
    """PROMPTS tokenized and CHAT through the chat template: generated in one batch, they check the tokenizer too."""
    from nanoflow_compiler.llm import apply_chat_template

    return [tokenizer(p).input_ids for p in PROMPTS] + [apply_chat_template(tokenizer, CHAT)]


def tiny_model(seed: int = 0):
    """A two-layer Llama with tied embeddings, weights large enough that greedy output is not one repeated token."""
    from nanoflow_compiler.models import LoadedModel, preset_config, random_model

    config = preset_config("smollm2-135m", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
    model = random_model(config, torch.float32, "cpu", seed=seed)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(50.0)
    return LoadedModel(model, None, "tiny", "preset")


def clone(artifact: Path, dest: Path) -> Path:
    shutil.copytree(artifact, dest, copy_function=os.link)
    return dest


def rewrite(path: Path, data: bytes) -> None:
    """Replace a (possibly hard-linked) file with new content without touching the other links."""
    path.unlink()
    path.write_bytes(data)


def edit_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    rewrite(root / "manifest.json", json.dumps(manifest).encode())
