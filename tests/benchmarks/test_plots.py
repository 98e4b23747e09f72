import pytest

from nanoflow_compiler.bench.plots import gantt, op_class, throughput_bar

PNG = b"\x89PNG\r\n\x1a\n"


def test_gantt_draws_measured_records(tmp_path):
    records = [("compute", "gate_up_proj[0]", 0.0, 0.30), ("memory", "attention[0]", 0.05, 0.25),
               ("compute", "down_proj[0]", 0.30, 0.45), ("other", "rmsnorm", 0.45, 0.47, "light")]
    out = gantt(records, tmp_path / "g.png")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000


def test_gantt_refuses_bad_records(tmp_path):
    with pytest.raises(ValueError, match="no timing records"):
        gantt([], tmp_path / "g.png")
    with pytest.raises(ValueError, match="ends before it starts"):
        gantt([("s", "op", 2.0, 1.0)], tmp_path / "g.png")
    with pytest.raises(ValueError, match="timing record"):
        gantt([("s", "op", 1.0)], tmp_path / "g.png")


def test_bar_chart(tmp_path):
    out = throughput_bar([("nanoflow", 1000.0, 400.0), ("vllm (published)", 800.0, None)], tmp_path / "b.png",
                         optimal=2000.0)
    assert out.read_bytes()[:8] == PNG


def test_op_classes():
    ops = ("qkv_proj", "aten.mm[1]", "paged_attention", "kv_append", "all_reduce", "rmsnorm")
    assert [op_class(o) for o in ops] == ["compute", "compute", "memory", "memory", "network", "light"]


def test_records_from_a_profiler_trace():
    from nanoflow_compiler.bench.plots import records_from_chrome_trace

    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "void gemm_kernel<float>(int)", "ts": 1000.0, "dur": 500.0,
         "args": {"stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "paged_attention_kernel", "ts": 1200.0, "dur": 300.0,
         "args": {"stream": 9}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 900.0, "dur": 50.0},
        {"ph": "X", "cat": "kernel", "name": "late", "ts": 5000.0, "dur": 10.0, "args": {"stream": 7}},
    ]}
    records = records_from_chrome_trace(trace, start_ms=0.5, end_ms=2.0)
    assert records == [("stream 7", "gemm_kernel", 1.0, 1.5), ("stream 9", "paged_attention_kernel", 1.2, 1.5)]
    with pytest.raises(ValueError, match="no GPU kernel"):
        records_from_chrome_trace({"traceEvents": []})
