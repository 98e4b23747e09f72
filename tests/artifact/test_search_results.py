"""An artifact planned with the search keeps the profile database it used, and its loader searches nothing."""

from __future__ import annotations

from artifact_helpers import tiny_model

from nanoflow_compiler import LLM, SamplingParams
from nanoflow_compiler.artifact import export, load, read_manifest, read_schedule
from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB
from nanoflow_compiler.search.search import Plan, plan_key

MODEL = "decoder-h64-i128-q4-kv2-d16"  # the layer shape of tiny_model()
SHARES = {"COMPUTE": 96, "MEMORY": 32}


def _db(path):
    db = ProfileDB(DeviceKey("Synthetic GPU", 132, "x", "y"))
    for bucket, memory in ((8, [0, 4, 8]), (32, [0, 8, 16, 24, 32])):
        bounds = {"COMPUTE": [0, bucket // 2, bucket], "MEMORY": memory, "LIGHT": [0, bucket // 2, bucket]}
        counts = {cls: len(cuts) - 1 for cls, cuts in bounds.items()}
        plan = Plan(MODEL, bucket, counts, bounds, SHARES, {}, 1e-3, "profile", "Synthetic GPU", measured_s=1e-3)
        db.plans[plan_key(MODEL, bucket)] = plan.to_json()
    db.save(path)
    return path


def test_the_profile_and_its_plans_travel_with_the_artifact(tmp_path, monkeypatch):
    db = _db(tmp_path / "db.json")
    out = export(tiny_model(), tmp_path / "art", buckets=[8, 32], num_kv_blocks=16, profile_db=str(db))
    manifest = read_manifest(out)
    assert manifest["search"]["plan_source"] == "profile" and manifest["search"]["profile_db"] == "profile.json"
    assert (out / "profile.json").read_bytes() == db.read_bytes() and "profile.json" in manifest["files"]
    assert manifest["engine"]["compile_options"] == {"plan": "auto", "profile_db": "profile.json"}
    (ir,) = read_schedule(out)
    assert ir.provenance.plan_source == "profile" and ir.provenance.options["sm_plan"] == SHARES
    assert ir.bucket(32).nano_batches["MEMORY"] == [8, 8, 8, 8]
    assert [s.sms for s in ir.bucket(32).streams] == [96, 32]

    def searched(*args, **kwargs):
        raise AssertionError("the loader searched")

    monkeypatch.setattr("nanoflow_compiler.search.auto.auto_options", searched)
    monkeypatch.setattr("nanoflow_compiler.backend.run_pipeline", searched)
    llm = load(out)
    assert llm.replanned is None
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    eager = LLM(tiny_model(), compile=False, num_kv_blocks=16)
    prompts = [[1, 2, 3], [9] * 20]
    assert [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == \
           [o.token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
