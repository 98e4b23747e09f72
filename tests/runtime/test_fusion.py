"""Fused LIGHT groups (inductor, CPU here) compute what the unfused program computes, in fewer steps; identical
layers share compiled groups; a group that cannot be fused runs unfused, with a warning and a status field."""

from __future__ import annotations

import pytest
import torch
from executor_batches import caches, fill_caches, mixed_batch

from nanoflow_compiler import backend
from nanoflow_compiler.runtime.executors import fused_kernel, fusion
from nanoflow_compiler.runtime.ir import NanoflowWarning

BLOCK = 4
REQUESTS = [(6, 1), (3, 1), (5, 3), (2, 4)]  # 2 decode tokens, 2 prefill chunks after cached prefixes; 3 padding


@pytest.fixture
def fresh_compiles(monkeypatch):
    """An empty process-wide cache of compiled groups (and of warned reasons), so counts start at zero."""
    monkeypatch.setattr(fused_kernel, "_CACHE", {})
    monkeypatch.setattr(fusion, "_WARNED", set())


def llama(tiny_config, layers: int = 2):
    from nanoflow_compiler.models import random_model

    torch.manual_seed(0)
    model = random_model(tiny_config(num_hidden_layers=layers), torch.float32, "cpu")
    batch = mixed_batch(model.config.vocab_size, BLOCK, requests=REQUESTS, pad=3)  # 12 tokens: few distinct sizes
    fill_caches(model, batch[3] + 8, BLOCK, torch.float32, "cpu")
    return model, batch[:3], [c.clone() for c in caches(model)]


def run(model, batch, initial, options):
    """Compile with the sequential executor and run once from the initial caches: logits, caches, the schedule
    (calling it again with the same batch rewrites the same KV slots: the same logits)."""
    for cache, saved in zip(caches(model), initial):
        cache.copy_(saved)
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True,
                           options={"executor": "sequential", **options})
        logits = fn(*batch)
    assert len(compiled) == 1 and compiled[0].ir is not None, "the backend fell back to eager"
    compiled[0].again = lambda: fn(*batch)
    return logits, [c.clone() for c in caches(model)], compiled[0]


def executed_steps(schedule) -> int:
    (program,) = schedule.executor.programs._programs.values()
    return sum(step.fn is not None for step in program.steps)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("options", [
    {"nano_batches": 1},
    {"nano_batches": 2},
    {"nano_batches": 3},
    {"nano_batches": 4},
    {"split": {"COMPUTE": [0.25, 0.75], "MEMORY": [0.5, 0.5]}},
], ids=["k1", "k2", "k3", "k4", "uneven"])
def test_fused_equals_unfused_in_fewer_steps(tiny_config, options):
    model, batch, initial = llama(tiny_config)
    ref_logits, ref_caches, unfused = run(model, batch, initial, {**options, "fuse_light": False})
    logits, kv, fused = run(model, batch, initial, {**options, "fuse_light": True})
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(kv, ref_caches):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    status = fused.executor.status()
    assert status["fused_groups"] > 0 and status["fusion_fallback"] is None, status
    assert executed_steps(fused) < executed_steps(unfused) * 0.7
    assert executed_steps(fused) + sum(len(g) - 1 for g in _groups(fused.ir)) == executed_steps(unfused)


def _groups(ir) -> list[list]:
    groups: dict = {}
    for op in ir.bucket(ir.buckets[0].tokens).ops:
        if op.group is not None:
            groups.setdefault(op.group, []).append(op)
    return list(groups.values())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_identical_layers_share_compiled_groups(tiny_config, fresh_compiles):
    statuses = {}
    for layers in (2, 3):  # the second model finds every group it needs compiled by the first
        model, batch, initial = llama(tiny_config, layers)
        _, _, schedule = run(model, batch, initial, {"nano_batches": 1, "fuse_light": True})
        statuses[layers] = status = schedule.executor.status()
        assert status["fusion_compiles"] + status["fusion_cache_hits"] == status["fused_groups"]
    assert 0 < statuses[2]["fusion_compiles"] < statuses[2]["fused_groups"]
    assert statuses[3]["fused_groups"] > statuses[2]["fused_groups"] and statuses[3]["fusion_compiles"] == 0
    assert fused_kernel.PROCESS.compiles >= statuses[2]["fusion_compiles"]


@pytest.mark.parametrize("when", ["compiling", "first run"])
def test_a_group_inductor_cannot_compile_runs_unfused_with_a_warning(tiny_config, fresh_compiles, monkeypatch, when):
    def fail(recipe, examples, invariant=False):
        if when == "compiling":
            raise RuntimeError("no inductor in this test")

        def kernel(inputs):
            raise RuntimeError("no inductor in this test")
        return kernel

    monkeypatch.setattr(fused_kernel, "_compile", fail)
    model, batch, initial = llama(tiny_config)
    ref_logits, _, _ = run(model, batch, initial, {"nano_batches": 2, "fuse_light": False})
    with pytest.warns(NanoflowWarning, match=r"runs unfused \(inductor failed on .*: RuntimeError: no inductor in this"):
        logits, _, schedule = run(model, batch, initial, {"nano_batches": 2, "fuse_light": True})
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    status = schedule.executor.status()
    assert "no inductor in this test" in status["fusion_fallback"] and status["fusion_fallbacks"] > 0
    assert status["fusion_fallbacks"] == status["fused_groups"] > status["fusion_compiles"]  # a failure is not retried
    compiles = status["fusion_compiles"]
    with torch.no_grad():  # a failed group is not compiled again: it stays unfused
        torch.testing.assert_close(schedule.again(), ref_logits, rtol=1e-5, atol=1e-5)
    assert schedule.executor.status()["fusion_compiles"] == compiles


def test_a_stored_group_that_is_not_consecutive_runs_unfused(tiny_config, fresh_compiles):
    model, batch, initial = llama(tiny_config)
    ref_logits, _, schedule = run(model, batch, initial, {"nano_batches": 2, "fuse_light": False})
    ops = [op for op in schedule.ir.buckets[0].ops if op.kind == "compute" and op.cls == "LIGHT"]
    ops[0].group = ops[-1].group = 7  # as a hand-edited artifact might say
    schedule.executor.programs._programs.clear()
    with pytest.warns(NanoflowWarning, match="group 7 is not consecutive in the issue order"), torch.no_grad():
        logits = schedule.again()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert schedule.executor.status()["fused_groups"] == 0
