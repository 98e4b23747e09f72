"""benchmarks/layer_gantt.py on the CPU (tiny config, wall clock): timings JSON -> plots.py gantt -> PNG."""

import json


def test_cpu_run_writes_timings_plots_read_and_a_png(script, tmp_path):
    layer_gantt = script("layer_gantt.py")
    args = layer_gantt.parser().parse_args(["--device", "cpu", "--layers", "3", "--warmup", "1", "--repeats", "1",
                                            "--output-dir", str(tmp_path)])
    assert layer_gantt.run(args) == 0
    data = json.loads((tmp_path / "layer_timings.json").read_text())
    assert data["plot_layers"] == [1] and data["executor"] == "sequential"
    layers = {r["layer"] for r in data["records"]}
    assert {0, 1, 2} <= layers
    assert {r["class"] for r in data["records"]} >= {"compute", "memory"}
    assert len({r["stream"] for r in data["records"]}) == 2
    plots = script("plots.py")
    shown = plots.load_records(str(tmp_path / "layer_timings.json"))
    assert shown and len(shown) == sum(r["layer"] == 1 for r in data["records"])
    assert len(plots.load_records(str(tmp_path / "layer_timings.json"), [0, 1, 2])) > len(shown)
    png = tmp_path / "gantt_layer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.run(plots.parser().parse_args(["gantt", str(tmp_path / "layer_timings.json"), "-o",
                                                str(tmp_path / "again.png")])) == 0
    assert (tmp_path / "again.png").stat().st_size > 0
