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


def _passes(model, options, device: str = "cpu"):
    """The PassContext after `emit` for the model's Dynamo graph (a backend that keeps it and runs eagerly)."""
    seen = {}

    def keep(gm, example_inputs):
        seen["ctx"] = compile_graph(gm, example_inputs, CompileOptions.from_dict(options), until="emit")
        return gm

    t = 64
    meta = AttnMetadata(torch.arange(t), torch.zeros(t, dtype=torch.int32), torch.arange(4, dtype=torch.int32)[None],
                        torch.tensor([t - 1])).to(device)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=keep, fullgraph=True)(torch.randint(0, 256, (t,), device=device),
                                                           torch.arange(t, device=device), meta)
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


def test_cuda_graphs_without_a_plan_take_this_gpus_stored_plans(monkeypatch):
    """The backend's default on CUDA: where `nanoflow search` stored plans for the layer shape, plan='auto' on that
    database, else overlap off with a warning; options that choose a plan (overlap=False included) and a CPU graph
    keep the options as given."""
    from types import SimpleNamespace

    import torch

    from nanoflow_compiler import backend
    from nanoflow_compiler.options import CompileOptions
    from nanoflow_compiler.search import auto

    shapes = {"layers.0.self_attn.qkv_proj.weight": (384, 128), "layers.0.mlp.gate_up_proj.weight": (512, 128),
              "layers.0.mlp.down_proj.weight": (128, 256), "layers.0.self_attn.k_cache": (8, 16, 2, 32)}
    monkeypatch.setattr(backend, "_parameter_shapes", lambda ctx, fakes: (shapes, 2))
    seen = []
    monkeypatch.setattr(auto, "stored_plans_db", lambda config: seen.append(config) or "/cache/gpu.json")

    def ctx(options: dict, device: str) -> SimpleNamespace:
        return SimpleNamespace(options=CompileOptions.from_dict({"device_sms": 132, **options}),
                               device=torch.device(device))

    cuda = ctx({"min_overlap_tokens": 512, "executor": "graph"}, "cuda")
    assert backend._cuda_default_plan(cuda, [])
    assert cuda.options.plan == "auto" and cuda.options.profile_db == "/cache/gpu.json"
    assert cuda.options.min_overlap_tokens == 512 and cuda.options.executor == "graph"
    assert seen[0].num_key_value_heads == 2 and seen[0].head_dim == 32
    for kept in (ctx({"plan": None}, "cuda"), ctx({"overlap": False}, "cuda"), ctx({"nano_batches": 3}, "cuda"),
                 ctx({}, "cpu")):
        assert not backend._cuda_default_plan(kept, []) and kept.options.plan is None
    monkeypatch.setattr(auto, "stored_plans_db", lambda config: None)
    notes = []
    none = ctx({"executor": "graph"}, "cuda")
    none.note = notes.append
    assert not backend._cuda_default_plan(none, []) and none.options.plan is None
    assert none.options.overlap is False and none.options.executor == "graph"
    assert notes == [f"nanoflow: {backend.NO_SEARCHED_PLAN}"] and "overlap" in none.options.given
