import json

import pytest


def test_ablation_ratios_against_the_first_setting(script, tiny_model_dir, tmp_path, capsys):
    abl = script("ablations.py")
    out = tmp_path / "abl.json"
    args = abl.parser().parse_args(["--model", tiny_model_dir, "--num-prompts", "3", "--input-len", "8",
                                    "--output-len", "2", "--only", "1,3", "--tflops", "1", "--bandwidth", "1",
                                    "--compile-options", '{"nano_batches": 2}', "--output-json", str(out)])
    assert abl.run(args) == 0
    r = json.loads(out.read_text())
    rows = r["ablations"]
    assert [row["setting"] for row in rows] == [list(abl.SETTINGS)[0], list(abl.SETTINGS)[2]]
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["tokens_per_second"] / rows[0]["tokens_per_second"])
    assert all(row["total_num_tokens"] == 30 for row in rows)
    assert rows[0]["compile_options"] == {"overlap": False, "executor": "sequential", "cuda_graphs": False,
                                          "nano_batches": 2}
    assert len(r["runs"]) == 2 and r["baseline"] == rows[0]["setting"] and r["complete"] is True
    assert "ratio" in capsys.readouterr().out


def test_ablation_settings_cover_the_issue(script):
    abl = script("ablations.py")
    settings = list(abl.SETTINGS.values())
    assert settings[0]["overlap"] is False  # the baseline: one stream, no split
    assert {"overlap": True, "executor": "sequential"}.items() <= settings[1].items()
    assert {s["cuda_graphs"] for s in settings} == {True, False}
    with pytest.raises(ValueError, match="indices"):
        abl.chosen("9")
