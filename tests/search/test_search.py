import pytest

from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.errors import InfeasibleRequestError, MissingProfileError
from nanoflow_compiler.search.search import Plan, load_plan, plan_key, search, search_bucket


def test_search_predicts_and_prefers_overlap_when_it_pays(make_db, make_chain):
    cost = TableCostModel(make_db(0))
    plan = search_bucket(make_chain(["gemm", "attn"]), 1024, cost, model="m", granularity=64)
    seq = [c for c in plan.candidates if not c["sm_plan"]]
    assert plan.sm_plan and len(seq) == 1 and plan.predicted_s < seq[0]["predicted_s"]
    assert all(plan.predicted_s <= c["predicted_s"] for c in plan.candidates)
    assert "not confirmed by a timed run" in plan.notes and plan.measured_s is None
    options = plan.to_options()
    assert options["nano_batches"] == plan.nano_batches and options["sm_plan"] == plan.sm_plan
    assert all(sum(sizes) == 1024 for sizes in options["split"][1024].values())


def test_confirmation_keeps_the_fastest_measured_plan(make_db, make_chain):
    cost = TableCostModel(make_db(0))
    timed = []

    def confirm(p: Plan) -> float:  # a device where the sequential plan happens to win
        timed.append(p)
        return 1.0 if p.sequential else 2.0 + p.predicted_s

    plan = search_bucket(make_chain(["gemm", "attn"]), 1024, cost, model="m", granularity=64, confirm=confirm,
                         confirm_top=2)
    assert len(timed) == 3 and sum(p.sequential for p in timed) == 1
    assert plan.sequential and plan.measured_s == 1.0
    assert plan.to_options() == {"overlap": False, "token_buckets": [1024]}
    assert sum(c["measured_s"] is not None for c in plan.candidates) == 2


def test_only_confirmed_plans_are_stored(make_db, make_chain, tmp_path):
    db = make_db(1)
    layer = make_chain(["gemm", "attn"])
    search(layer, [512], TableCostModel(db), model="m", db=db, granularity=64)
    assert db.plans == {}
    search(layer, [512, 1024], TableCostModel(db), model="m", db=db, db_path=tmp_path / "db.json",
           granularity=64, confirm=lambda p: p.predicted_s * 1.01)
    assert set(db.plans) == {plan_key("m", 512), plan_key("m", 1024)}
    plan = load_plan(db, "m", 1024)
    assert db.plans[plan_key("m", 1024)]["options"] == plan.to_options()
    assert plan.bucket == 1024 and plan.measured_s == pytest.approx(plan.predicted_s * 1.01)
    with pytest.raises(MissingProfileError, match=r"no searched plan for model 'm' at bucket 2048 .* \[512, 1024\]"):
        load_plan(db, "m", 2048)


def test_bucket_without_profile_names_bucket_and_range(make_db, make_chain):
    cost = TableCostModel(make_db(0))
    with pytest.raises(MissingProfileError, match="no profile for bucket 4096: op kind 'gemm' was profiled for "
                                                  "64..1024 tokens"):
        search_bucket(make_chain(["gemm", "attn"]), 4096, cost, model="m")


def test_more_sms_than_exist(make_db, make_chain):
    with pytest.raises(InfeasibleRequestError, match="asked for 64 SMs but the device has 48"):
        search_bucket(make_chain(["gemm", "attn"]), 1024, TableCostModel(make_db(0)), model="m", num_sms=64)
