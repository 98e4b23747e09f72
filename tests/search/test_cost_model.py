import pytest

from nanoflow_compiler.search.cost_model import AnalyticalCostModel, DevicePeaks, TableCostModel, peaks_for
from nanoflow_compiler.search.errors import MissingProfileError
from nanoflow_compiler.search.layer_graph import COMPUTE, MEMORY, OpSpec


def test_table_interpolates_in_tokens_and_sms(make_db):
    db = make_db(3)
    cost = TableCostModel(db)
    gemm = OpSpec("gemm", COMPUTE)
    assert cost.op_time(gemm, 256, 16) == db.ops["gemm"][256][16]
    mid = (db.ops["gemm"][256][16] + db.ops["gemm"][512][16]) / 2
    assert cost.op_time(gemm, 384, 16) == pytest.approx(mid)
    assert cost.op_time(gemm, 256, 20) == pytest.approx((db.ops["gemm"][256][16] + db.ops["gemm"][256][24]) / 2)


def test_table_never_extrapolates(make_db):
    cost = TableCostModel(make_db(3))
    with pytest.raises(MissingProfileError, match="profiled for 64..1024 tokens, not 2048"):
        cost.op_time(OpSpec("gemm", COMPUTE), 2048, 16)
    with pytest.raises(MissingProfileError, match="no profile for op kind 'mlp'; profiled kinds: attn, gemm"):
        cost.op_time(OpSpec("mlp", COMPUTE), 256, 16)
    with pytest.raises(MissingProfileError, match="profiled on 8..48 SMs, not on 4"):
        cost.op_time(OpSpec("gemm", COMPUTE), 256, 4)


def test_slowdown_lookup_kind_then_class_then_none(make_db):
    db = make_db(3)
    db.add_interference("class:COMPUTE", 8, "class:MEMORY", 40, 1.7, 1.1)
    cost = TableCostModel(db)
    gemm, attn, other = OpSpec("gemm", COMPUTE), OpSpec("attn", MEMORY), OpSpec("mm2", COMPUTE)
    assert cost.slowdown(gemm, 16, attn, 32) == db.interference[("gemm", 16, "attn", 32)]
    assert cost.slowdown(other, 8, attn, 40) == 1.7  # falls back to the class-level entry
    assert cost.slowdown(other, 8, OpSpec("x", COMPUTE), 8) == 1.0
    assert ("mm2", "x") in cost.missing_interference


def test_analytical_follows_nanoflow_curve_and_compute_share():
    model = AnalyticalCostModel(100, DevicePeaks(100e12, 1e12, launch_s=0.0))
    for share, frac in [(0.1, 0.2), (0.2, 0.3), (0.8, 0.85), (0.9, 0.95), (1.0, 1.0)]:
        assert model.memory_fraction(share) == pytest.approx(frac)
    gemv = OpSpec("gemv", MEMORY, 0.0, 0.0, 1e6)
    assert model.op_time(gemv, 1000, 10) == pytest.approx(model.op_time(gemv, 1000, 100) / 0.2)
    gemm = OpSpec("gemm", COMPUTE, 1e9, 0.0, 0.0)
    assert model.op_time(gemm, 1000, 25) == pytest.approx(4 * model.op_time(gemm, 1000, 100))
    assert model.slowdown(gemm, 50, gemv, 50) == 1.0


def test_peaks_for_known_and_unknown_devices():
    assert peaks_for("NVIDIA H100 80GB HBM3")[0] == "H100"
    assert peaks_for("Some GPU")[0] == "H100 (assumed)"
