"""plan='auto' through the compiler: without a profile the analytical model plans, with a warning that the
Schedule IR's provenance records; with a stored plan, that plan's options are compiled in."""

import warnings

import pytest
import torch

from nanoflow_compiler.backend import compile_graph
from nanoflow_compiler.options import CompileOptions
from nanoflow_compiler.runtime.attention import AttnMetadata
from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB
from nanoflow_compiler.search.search import Plan, plan_key


def _passes(model, options):
    """The PassContext after `emit` for the model's Dynamo graph (a backend that keeps it and runs eagerly)."""
    seen = {}

    def keep(gm, example_inputs):
        seen["ctx"] = compile_graph(gm, example_inputs, CompileOptions.from_dict(options), until="emit")
        return gm

    t = 64
    meta = AttnMetadata(torch.arange(t), torch.zeros(t, dtype=torch.int32), torch.arange(4, dtype=torch.int32)[None],
                        torch.tensor([t - 1]))
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=keep, fullgraph=True)(torch.randint(0, 256, (t,)), torch.arange(t), meta)
    return seen["ctx"]


@pytest.fixture
def tiny_model(tiny_config):
    from nanoflow_compiler.models import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_config()).eval()
    model.allocate_kv_cache(16, 16, torch.float32, "cpu")
    return model


def test_auto_without_profile_warns_and_records(tiny_model):
    with pytest.warns(Warning, match="using the analytical cost model .* run `nanoflow search`"):
        ctx = _passes(tiny_model, {"plan": "auto"})
    assert ctx.plan_source == "analytical"
    assert any("using the analytical cost model" in n for n in ctx.ir.provenance.notes)


def test_auto_uses_the_stored_plan(tiny_model, tmp_path):
    db = ProfileDB(DeviceKey("Synthetic GPU", 132, "x", "y"))
    bounds = {"COMPUTE": [0, 32, 64], "MEMORY": [0, 16, 32, 48, 64], "LIGHT": [0, 32, 64]}
    plan = Plan("decoder-h64-i128-q4-kv2-d16", 64, {"COMPUTE": 2, "MEMORY": 4, "LIGHT": 2}, bounds,
                {"COMPUTE": 96, "MEMORY": 32}, {}, 1e-3, "profile", "Synthetic GPU", measured_s=1e-3)
    db.plans[plan_key(plan.model, 64)] = plan.to_json()
    db.save(tmp_path / "db.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = _passes(tiny_model, {"plan": "auto", "profile_db": str(tmp_path / "db.json")})
    assert not [w for w in caught if "analytical" in str(w.message)]
    assert ctx.plan_source == "profile"
    assert ctx.options.sm_plan == {"COMPUTE": 96, "MEMORY": 32} and ctx.options.sizes(64, "MEMORY") == [16] * 4
