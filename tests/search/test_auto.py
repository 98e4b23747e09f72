import warnings

import pytest

from nanoflow_compiler.search.auto import load_plan_for
from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.errors import SearchWarning
from nanoflow_compiler.search.layer_graph import decoder_layer_graph, model_key
from nanoflow_compiler.search.search import plan_key, search_bucket


def test_without_profile_the_analytical_model_is_used_with_a_warning(tiny_config, tmp_path):
    config = tiny_config()
    with pytest.warns(SearchWarning, match="no profile database at .*missing.json; using the analytical cost model"):
        plan = load_plan_for(config, 256, profile_db=tmp_path / "missing.json")
    assert plan.cost_source == "analytical" and plan.notes[0].startswith("fallback: plan='auto'")
    assert plan.bucket == 256 and plan.model == model_key(config)
    with pytest.warns(SearchWarning, match="no profile database was given"):
        again = load_plan_for(config, 256)
    assert again.nano_batches == plan.nano_batches and again.sm_plan == plan.sm_plan


def test_stored_plan_is_used_without_warning(make_db, make_chain, tiny_config):
    db = make_db(0)
    layer = make_chain(["gemm", "attn"])
    layer.graph["model_key"] = "tiny"
    stored = search_bucket(layer, 512, TableCostModel(db), model="tiny", granularity=64, confirm=lambda p: 1e-3)
    db.plans[plan_key("tiny", 512)] = stored.to_json()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = load_plan_for(tiny_config(), 512, profile_db=db, layer=layer)
    assert plan.measured_s == 1e-3 and plan.sm_plan == stored.sm_plan


def test_profile_without_plan_is_searched_and_one_without_the_model_falls_back(make_db, make_chain, tiny_config):
    db = make_db(0)
    layer = make_chain(["gemm", "attn"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = load_plan_for(tiny_config(), 512, profile_db=db, layer=layer)
    assert plan.cost_source == "profile" and any("searched the profile at compile time" in n for n in plan.notes)
    with pytest.warns(SearchWarning, match="does not cover this model: no profile for bucket 256: "
                                           "op kind 'rmsnorm_residual.* never profiled"):
        plan = load_plan_for(tiny_config(), 256, profile_db=db, layer=decoder_layer_graph(tiny_config()))
    assert plan.cost_source == "analytical"


def test_merge_plan_options_keeps_per_bucket_sizes_and_notes_conflicts(make_db, make_chain):
    from nanoflow_compiler.search.auto import merge_plan_options

    cost = TableCostModel(make_db(0))
    layer = make_chain(["gemm", "attn"])
    plans = {b: search_bucket(layer, b, cost, model="m", granularity=64) for b in (512, 1024)}
    options, notes = merge_plan_options(plans)
    assert options["token_buckets"] == [512, 1024] and options["sm_plan"] == plans[1024].sm_plan
    if plans[512].sm_plan == plans[1024].sm_plan:
        assert set(options["split"]) == {512, 1024} and notes == []
    else:
        assert "bucket 512" in notes[0]
    plans[512] = search_bucket(layer, 512, cost, model="m", granularity=64, confirm=lambda p: 0 if p.sequential else 1)
    options, notes = merge_plan_options(plans)
    assert options["split"].keys() == {1024} and "bucket 512: its plan (sequential)" in notes[0]


def _named_shapes(model):
    return {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}


def test_auto_options_from_parameter_shapes_returns_fallback_notes(tiny_config):
    from nanoflow_compiler.models import LlamaForCausalLM
    from nanoflow_compiler.search.auto import auto_options

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the notes come back; nothing is raised here
        options, notes, source = auto_options(_named_shapes(LlamaForCausalLM(tiny_config())), [128, 256])
    assert source == "analytical" and any("using the analytical cost model" in n for n in notes)
    assert options["token_buckets"] == [128, 256]
    options_mod = pytest.importorskip("nanoflow_compiler.options")
    options_mod.CompileOptions.from_dict(options)  # what the compiler will accept


def test_a_measured_sequential_plan_of_the_largest_bucket_decides_every_bucket(tiny_config, monkeypatch, make_db,
                                                                                make_chain):
    """The largest bucket's plan sets the overlap flag; when the search measured one stream fastest there, the
    smaller buckets are not planned, so their missing profiles raise no analytical-model warnings."""
    from nanoflow_compiler.models import LlamaForCausalLM
    from nanoflow_compiler.search import auto

    lead = search_bucket(make_chain(["gemm", "attn"]), 1024, TableCostModel(make_db(0)), model="m", granularity=64,
                         confirm=lambda p: 0 if p.sequential else 1)
    assert lead.sequential and lead.cost_source == "profile"
    asked = []
    monkeypatch.setattr(auto, "load_plan_for", lambda config, bucket, *rest: asked.append(bucket) or lead)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options, notes, source = auto.auto_options(_named_shapes(LlamaForCausalLM(tiny_config())), [256, 1024, 512])
    assert asked == [1024] and notes == [] and source == "profile"
    assert options["overlap"] is False and options["token_buckets"] == [256, 512, 1024]


@pytest.mark.parametrize("stored_sequential", [True, False])
def test_a_measured_one_stream_plan_above_the_engines_buckets_decides_them(tiny_config, make_db, make_chain, tmp_path,
                                                                           stored_sequential):
    """`nanoflow search` stores 1024 by default; an engine whose largest bucket is 512 takes that plan when it is one
    stream (no warnings for its unprofiled buckets, as the H100 showed: session 6). An overlapped plan at 1024 says
    nothing of 512: the engine's own buckets are planned, with the analytical model's warning."""
    from nanoflow_compiler.models import LlamaForCausalLM
    from nanoflow_compiler.search.auto import auto_options

    config = tiny_config()
    db = make_db(0)
    stored = search_bucket(make_chain(["gemm", "attn"]), 1024, TableCostModel(db), model=model_key(config),
                           granularity=64, confirm=lambda p: (0 if p.sequential else 1) if stored_sequential else
                           (1 if p.sequential else 0))
    assert stored.sequential == stored_sequential and stored.cost_source == "profile"
    db.plans[plan_key(model_key(config), 1024)] = stored.to_json()
    db.save(tmp_path / "db.json")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        options, notes, source = auto_options(_named_shapes(LlamaForCausalLM(config)), [128, 512],
                                              profile_db=str(tmp_path / "db.json"))
    assert options["token_buckets"] == [128, 512]
    if stored_sequential:
        assert notes == [] and source == "profile" and options["overlap"] is False
    else:
        assert any("using the analytical cost model" in n for n in notes) and source == "analytical"


def test_auto_options_declines_graphs_of_another_form():
    from nanoflow_compiler.search.auto import auto_options

    options, notes, _ = auto_options({"layers.0.mlp.experts.w1": (8, 16, 4)}, [128])
    assert options is None and "default plan stands" in notes[0]


def test_engines_plan_from_this_gpus_database_only_when_it_holds_their_layer(tiny_config, tmp_path, monkeypatch):
    """`stored_plans_db`: the default database of the current GPU, if `nanoflow search` stored a plan for this layer
    shape; none without a GPU, a file, or such a plan; a database of other torch/triton versions is passed over,
    with a warning."""
    from nanoflow_compiler.search import auto
    from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB, default_db_path

    config = tiny_config()
    assert auto.stored_plans_db(config) is None  # CPU: no device key
    key = DeviceKey("Synthetic GPU", 132, "2.13.0", "3.6.0")
    monkeypatch.setattr(DeviceKey, "current", classmethod(lambda cls, device_index=0: key))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_db_path(key)
    assert str(path).startswith(str(tmp_path)) and auto.stored_plans_db(config) is None  # no file
    db = ProfileDB(key)
    db.plans[plan_key("decoder-another-layer", 1024)] = {"bucket": 1024}
    path.parent.mkdir(parents=True)
    db.save(path)
    assert auto.stored_plans_db(config) is None  # a plan, but for another layer shape
    db.plans[plan_key(model_key(config), 1024)] = {"bucket": 1024}
    db.save(path)
    assert auto.stored_plans_db(config) == str(path)
    monkeypatch.setattr(DeviceKey, "current",
                        classmethod(lambda cls, device_index=0: DeviceKey("Synthetic GPU", 132, "2.14.0", "3.6.0")))
    with pytest.warns(SearchWarning, match="not planning from .*torch"):
        assert auto.stored_plans_db(config) is None
