"""CPU smoke runs of benchmarks/search_vs_grid.py: its 'timer' is the cost model, so the search must match the grid;
the time box cuts the grid and says so; a plan that fails to run is recorded and skipped."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "search_vs_grid.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("search_vs_grid", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_simulated_run_writes_json_and_search_matches_grid(tmp_path):
    bench = load_bench()
    out = tmp_path / "r.json"
    payload = bench.main(["--simulate", "--buckets", "256", "--max-nano", "2", "--output", str(out)])
    result = json.loads(out.read_text())["buckets"]["256"]
    assert result == json.loads(json.dumps(payload["buckets"]["256"], default=str))
    assert result["grid_size"] == 1 + 4 * 15  # sequential + 2x2 counts x 15 share pairs using >= 125 of 132 SMs
    assert result["grid_timed"] == result["grid_size"] and result["grid_complete"]
    assert result["ratio_to_grid_best"] <= 1 + 1e-9 and result["within_3pct"]
    assert payload["search_under_10_min"]
    ranks = [g["rank"] for g in result["grid"]]
    assert ranks == list(range(len(ranks)))
    assert [g["predicted_s"] for g in result["grid"][1:]] == sorted(g["predicted_s"] for g in result["grid"][1:])
    assert not out.with_name(out.name + ".part").exists()


def test_time_box_cuts_the_grid_and_the_json_says_so(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "r.json"
    bench.main(["--simulate", "--buckets", "256", "--max-nano", "2", "--time-budget", "0.001", "--output", str(out)])
    result = json.loads(out.read_text())["buckets"]["256"]
    assert result["grid_timed"] == 2 and not result["grid_complete"]  # the sequential plan and the first predicted
    assert result["grid"][0]["sm_plan"] == {} and result["sequential_s"] == result["grid"][0]["measured_s"]
    assert "grid cut by the time box: 2 of 61 timed" in capsys.readouterr().out


def test_a_plan_that_fails_is_recorded_and_skipped(tmp_path):
    bench = load_bench()
    plans = [type("P", (), {"nano_batches": {}, "sm_plan": s, "predicted_s": 1.0, "sequential": not s})()
             for s in ({}, {"COMPUTE": 8}, {"COMPUTE": 16})]

    def timer(plan):
        if plan.sm_plan == {"COMPUTE": 8}:
            raise RuntimeError("no partition")
        return 2.0

    record = {"grid": [], "grid_errors": []}
    results = bench.Results(tmp_path / "r.json", {}, 0.0)
    timed = bench.time_grid(plans, timer, float("inf"), record, results)
    assert [rank for _, _, rank in timed] == [0, 2]
    assert record["grid_errors"][0]["rank"] == 1 and "no partition" in record["grid_errors"][0]["error"]

