import json

import pytest


def test_bar_skips_skipped_peers_and_gantt_reads_dict_records(script, tmp_path, capsys):
    plots = script("plots.py")
    ours = {"system": "nanoflow", "tokens_per_second": 100.0, "output_tokens_per_second": 40.0,
            "workload": {"dataset": "random", "mean_input_len": 1024.0, "mean_output_len": 512.0},
            "optimal": {"optimal_tokens_per_second": 250.0}}
    (tmp_path / "a.json").write_text(json.dumps(ours))
    (tmp_path / "b.json").write_text(json.dumps({"system": "vllm", "skipped": True, "reason": "not installed"}))
    rows, optimal = plots.bar_rows([str(tmp_path / "a.json"), str(tmp_path / "b.json")], "system+dataset")
    assert rows == [("nanoflow\nrandom 1024/512", 100.0, 40.0)] and optimal == 250.0
    assert "vllm skipped" in capsys.readouterr().out
    (tmp_path / "t.json").write_text(json.dumps({"records": [
        {"stream": "compute", "op": "qkv_proj", "start_ms": 0, "end_ms": 1},
        ["memory", "attention", 0.5, 2.0, "memory"]]}))
    assert plots.load_records(str(tmp_path / "t.json")) == [("compute", "qkv_proj", 0, 1),
                                                           ("memory", "attention", 0.5, 2.0, "memory")]
    (tmp_path / "bad.json").write_text(json.dumps([{"stream": "s"}]))
    with pytest.raises(ValueError, match="lacks"):
        plots.load_records(str(tmp_path / "bad.json"))
