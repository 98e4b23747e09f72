"""On the GPU: a graph compiled without a plan takes the plan `nanoflow search` stored for this device and layer
shape in the default database (`~/.cache/nanoflow/profiles/<gpu>.json`), and the IR records where it came from;
without a stored plan it runs with overlap off, with a warning."""

import pytest
import torch
from test_auto_compile import _passes

from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB, default_db_path
from nanoflow_compiler.search.search import Plan, plan_key

pytestmark = pytest.mark.gpu


def test_a_graph_without_a_plan_compiles_the_stored_one(tiny_config, tmp_path, monkeypatch):
    from nanoflow_compiler.models import LlamaForCausalLM

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    key = DeviceKey.current()
    bounds = {"COMPUTE": [0, 32, 64], "MEMORY": [0, 16, 32, 48, 64], "LIGHT": [0, 32, 64]}
    plan = Plan("decoder-h64-i128-q4-kv2-d16", 64, {"COMPUTE": 2, "MEMORY": 4, "LIGHT": 2}, bounds,
                {"COMPUTE": 96, "MEMORY": 32}, {}, 1e-3, "profile", key.name, measured_s=1e-3)
    db = ProfileDB(key)
    db.plans[plan_key(plan.model, 64)] = plan.to_json()
    path = default_db_path(key)
    path.parent.mkdir(parents=True)
    db.save(path)
    model = LlamaForCausalLM(tiny_config()).eval().cuda()
    model.allocate_kv_cache(16, 16, torch.float32, "cuda")
    ctx = _passes(model, {}, device="cuda")
    assert ctx.plan_source == "profile" and ctx.options.plan == "auto" and ctx.options.profile_db == str(path)
    assert ctx.options.sm_plan == {"COMPUTE": 96, "MEMORY": 32} and ctx.options.sizes(64, "MEMORY") == [16] * 4
    assert ctx.ir.provenance.options["profile_db"] == str(path)


def test_a_graph_without_a_plan_or_a_stored_one_runs_overlap_off_and_says_so(tiny_config, tmp_path, monkeypatch):
    from nanoflow_compiler.backend import NO_SEARCHED_PLAN
    from nanoflow_compiler.models import LlamaForCausalLM

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: nothing searched on this machine
    model = LlamaForCausalLM(tiny_config()).eval().cuda()
    model.allocate_kv_cache(16, 16, torch.float32, "cuda")
    with pytest.warns(Warning, match="no plan of `nanoflow search` is stored"):
        ctx = _passes(model, {}, device="cuda")
    assert ctx.options.overlap is False and ctx.options.plan is None
    assert f"nanoflow: {NO_SEARCHED_PLAN}" in ctx.ir.provenance.notes
    assert all(len(sizes) == 1 for sizes in ctx.ir.buckets[0].nano_batches.values())
