"""Fixtures of the end-to-end compiler tests (torch.compile(..., backend="nanoflow") against eager, float32, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from compiler_batches import with_random_caches


@pytest.fixture
def llama_pair(tiny_config):
    """(eager, twin) copies of our tiny Llama with identical weights and caches."""
    from nanoflow_compiler.models import random_model

    eager = with_random_caches(random_model(tiny_config(), torch.float32, "cpu"))
    return eager, copy.deepcopy(eager)
