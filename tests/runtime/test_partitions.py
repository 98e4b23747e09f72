"""SM partitions: request validation (CPU) and disjoint green-context streams on the GPU."""

from __future__ import annotations

import pytest
import torch

from nanoflow_compiler.runtime import _green_ctx, partitions
from nanoflow_compiler.runtime.partitions import PartitionError, SmLayout, validate_shares

H100 = SmLayout(total_sms=132, min_partition=8, granularity=8, source="test")


@pytest.mark.parametrize("shares", [{"COMPUTE": 96, "MEMORY": 32}, {"A": 8}, {"COMPUTE": 96, "MEMORY": 36},
                                    {"A": 64, "B": 64}, {"A": 132}])
def test_valid_shares_pass(shares):
    validate_shares(shares, H100)


@pytest.mark.parametrize("shares, match", [
    ({}, "no partitions"),
    ({"COMPUTE": 100, "MEMORY": 28}, "not a multiple of the device's SM granularity 8 \\(try 96 or 104\\)"),
    ({"COMPUTE": 96, "MEMORY": 40}, "ask for 136 SMs"),
    ({"COMPUTE": 4}, "below the device's minimum of 8"),
    ({"COMPUTE": 96.0}, "must be an int"),
    ({"COMPUTE": True}, "must be an int"),
    ({"MEMORY": 36, "COMPUTE": 96}, "MEMORY.*not a multiple"),  # only the LAST partition may take an odd rest
    ({"COMPUTE": 96, "MEMORY": 30}, "not a multiple"),  # 30 is not the whole rest (36)
])
def test_invalid_shares_name_the_problem(shares, match):
    with pytest.raises(PartitionError, match=match):
        validate_shares(shares, H100)


def test_partition_error_is_a_value_error():
    assert issubclass(PartitionError, ValueError)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown green-context backend"):
        _green_ctx.split(0, [8], backend="nvml")


gpu = pytest.mark.gpu


@gpu
def test_layout_reads_device():
    layout = partitions.sm_layout()
    assert layout.total_sms == torch.cuda.get_device_properties(0).multi_processor_count
    assert layout.granularity >= 1 and layout.min_partition >= 1


@gpu
@pytest.mark.parametrize("backend", ["cuda.bindings", "ctypes"])
def test_driver_split_gives_disjoint_groups(backend):
    layout = partitions.sm_layout()
    groups = _green_ctx.split(0, [96, 32] if layout.total_sms >= 128 else [16, 8], backend=backend)
    assert [g.num_sms for g in groups] == ([96, 32] if layout.total_sms >= 128 else [16, 8])
    assert all(g.backend == backend for g in groups)


@gpu
def test_make_partitions_is_disjoint_and_sets_budgets():
    parts = partitions.make_partitions({"COMPUTE": 96, "MEMORY": 32})
    assert {n: p.num_sms for n, p in parts.items()} == {"COMPUTE": 96, "MEMORY": 32}
    assert all(p.disjoint and p.fallback_reason is None for p in parts.values())
    seen = partitions.check_disjoint(parts)
    assert 0 < seen["COMPUTE"] <= 96 and 0 < seen["MEMORY"] <= 32
    assert partitions.sm_budget(parts["MEMORY"].stream) == 32
    with torch.cuda.stream(parts["COMPUTE"].stream):
        assert partitions.sm_budget() == 96
    assert partitions.sm_budget(torch.cuda.current_stream()) == partitions.sm_layout().total_sms


@gpu
def test_partition_stream_runs_work_and_graphs():
    parts = partitions.make_partitions({"A": 64, "B": 64})
    x = torch.randn(256, 256, device="cuda")
    ref = x @ x
    cap, out = torch.cuda.Stream(), {}
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=cap):
        for name, p in parts.items():
            p.stream.wait_stream(cap)
            with torch.cuda.stream(p.stream):
                out[name] = x @ x
            cap.wait_stream(p.stream)
    graph.replay()
    torch.cuda.synchronize()
    for value in out.values():
        torch.testing.assert_close(value, ref)


@gpu
def test_impossible_request_raises_even_with_fallback():
    with pytest.raises(PartitionError, match="granularity"):
        partitions.make_partitions({"COMPUTE": 100, "MEMORY": 28})
    with pytest.raises(PartitionError, match="device has"):
        partitions.make_partitions({"COMPUTE": 128, "MEMORY": 16})


@gpu
def test_missing_driver_route_falls_back_and_says_so(monkeypatch):
    def refuse(*args, **kwargs):
        raise _green_ctx.GreenContextUnavailable("simulated old driver")

    monkeypatch.setattr(_green_ctx, "split", refuse)
    with pytest.warns(RuntimeWarning, match="fall back to plain streams"):
        parts = partitions.make_partitions({"COMPUTE": 96, "MEMORY": 32})
    assert all(not p.disjoint and p.backend == "plain-streams" for p in parts.values())
    assert "simulated old driver" in parts["MEMORY"].fallback_reason
    assert partitions.sm_budget(parts["MEMORY"].stream) == 32
    with pytest.raises(PartitionError, match="unavailable"):
        partitions.make_partitions({"COMPUTE": 96}, allow_fallback=False)


@gpu
def test_cukernel_loading_runs_confined_on_partitions():
    """The opt-in CUkernel route (for drivers that refuse plain Triton launches on green streams) works too."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from nanoflow_compiler.runtime import partitions\n"
            "from nanoflow_compiler.runtime.kernels import gemm\n"
            "parts = partitions.make_partitions({'COMPUTE': 96, 'MEMORY': 32})\n"
            "print(partitions.check_disjoint(parts))\n"
            "a = torch.randn(512, 1024, device='cuda', dtype=torch.bfloat16)\n"
            "w = torch.randn(2048, 1024, device='cuda', dtype=torch.bfloat16)\n"
            "with torch.cuda.stream(parts['COMPUTE'].stream):\n"
            "    y = gemm.sm_gemm(a, w)\n"
            "torch.cuda.synchronize()\n"
            "ref = a.float() @ w.float().T\n"
            "assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2\n")
    env = {**__import__("os").environ, "NANOFLOW_TRITON_CUKERNEL": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
