import json

import pytest
import torch

from nanoflow_compiler.cli import main


def test_analytical_search_prints_and_writes_plans(tmp_path, capsys):
    out = tmp_path / "plans.json"
    assert main(["search", "--model", "smollm2-135m", "--analytical", "--buckets", "256", "--max-nano", "2",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bucket 256: nano-batches" in text and "[analytical]" in text
    plan = json.loads(out.read_text())["256"]
    assert plan["bucket"] == 256 and plan["cost_source"] == "analytical" and plan["model"].startswith("decoder-h576")


def test_bad_buckets_are_one_clear_line(capsys):
    assert main(["search", "--analytical", "--buckets", "1024,abc"]) == 2
    assert "--buckets must be comma-separated integers" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_profiling_without_gpu_says_so(capsys):
    assert main(["search", "--model", "smollm2-135m", "--buckets", "256"]) == 2
    assert "profiling needs a CUDA GPU" in capsys.readouterr().err
