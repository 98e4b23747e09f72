import pytest

from nanoflow_compiler.search.cost_model import TableCostModel
from nanoflow_compiler.search.errors import ProfilingUnavailableError, SearchWarning
from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB
from nanoflow_compiler.search.profiler import coarse_to_fine, profile, token_counts
from nanoflow_compiler.search.search import search_bucket

DEVICE = DeviceKey("Fake GPU", 36, "t", "tr", 8)


class FakeTimer:
    """Times that fall with SMs; co-running costs each op 20%."""

    def __init__(self):
        self.calls = 0

    def solo(self, op, sms):
        self.calls += 1
        return op() * 36 / sms

    def corun(self, op_a, sms_a, op_b, sms_b):
        self.calls += 1
        return 1.2 * self.solo(op_a, sms_a), 1.2 * self.solo(op_b, sms_b)


def fake_op(spec, tokens):
    return lambda: 1e-6 * (10 + tokens * (2 if spec.cls == "MEMORY" else 1))


def test_token_counts_cover_every_nano_batch():
    assert token_counts([1024], 4, 16) == [256, 336, 352, 512, 1024]


def test_coarse_to_fine_levels():
    assert coarse_to_fine([8, 16, 24, 32, 36]) == [[8, 36], [24], [16, 32]]


def test_profile_fills_table_and_interference(make_chain):
    db = ProfileDB(DEVICE)
    profile(make_chain(["gemm", "attn"]), [256], db, timer=FakeTimer(), make_op=fake_op, progress=False)
    assert sorted(db.ops) == ["attn", "gemm"]
    assert sorted(db.ops["gemm"]) == token_counts([256], 4, 16)
    assert sorted(db.ops["gemm"][256]) == [8, 16, 24, 32, 36]
    assert db.interference[("class:COMPUTE", 8, "class:MEMORY", 24)] == pytest.approx(1.2)
    plan = search_bucket(make_chain(["gemm", "attn"]), 256, TableCostModel(db), model="m")
    assert plan.cost_source == "profile"


def test_time_budget_keeps_endpoints_and_warns(make_chain):
    db = ProfileDB(DEVICE)
    with pytest.warns(SearchWarning, match="time budget ran out"):
        profile(make_chain(["gemm", "attn"]), [256], db, timer=FakeTimer(), make_op=fake_op, time_budget=0.0,
                progress=False)
    assert sorted(db.ops["gemm"][256]) == [8, 36]
    assert TableCostModel(db).op_time(make_chain(["gemm"]).nodes["gemm"]["spec"], 256, 16) > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")
def test_cpu_says_profiling_needs_a_gpu(make_chain):
    with pytest.raises(ProfilingUnavailableError, match="profiling needs a CUDA GPU"):
        profile(make_chain(["gemm", "attn"]), [256], ProfileDB(DEVICE), progress=False)
