"""CPU smoke run of benchmarks/search_vs_grid.py: its 'timer' is the cost model, so the search must match the grid."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "search_vs_grid.py"


def test_simulated_run_writes_json_and_search_matches_grid(tmp_path):
    spec = importlib.util.spec_from_file_location("search_vs_grid", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    payload = bench.main(["--simulate", "--buckets", "256", "--max-nano", "2", "--output", str(out)])
    result = json.loads(out.read_text())["buckets"]["256"]
    assert result == json.loads(json.dumps(payload["buckets"]["256"], default=str))
    assert result["grid_size"] == 1 + 4 * 15  # sequential + 2x2 counts x 15 share pairs using >= 125 of 132 SMs
    assert result["ratio_to_grid_best"] <= 1 + 1e-9 and result["within_3pct"]
    assert payload["search_under_10_min"]
