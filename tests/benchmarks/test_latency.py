import json
import math

import numpy as np
import pytest

from nanoflow_compiler.bench.latency import latency_metrics, poisson_arrivals
from nanoflow_compiler.cli import main


def test_poisson_arrivals_are_seeded_with_the_right_rate():
    a = poisson_arrivals(20000, rate=4.0, seed=1)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.diff(a).mean() == pytest.approx(0.25, rel=0.03)
    assert np.array_equal(a, poisson_arrivals(20000, 4.0, 1))
    assert not np.array_equal(a, poisson_arrivals(20000, 4.0, 2))
    assert np.all(poisson_arrivals(5, math.inf, 0) == 0)
    with pytest.raises(ValueError, match="positive"):
        poisson_arrivals(5, 0.0, 0)


def test_metrics_are_means_and_percentiles():
    records = [{"ttft": t, "tpot": None if t == 4 else t / 10, "e2el": 2 * t, "normalized": t / 100}
               for t in (1.0, 2.0, 3.0, 4.0)]
    m = latency_metrics(records)
    assert m["mean_ttft_ms"] == 2500.0 and m["median_ttft_ms"] == 2500.0
    assert m["p99_ttft_ms"] == pytest.approx(np.percentile([1000, 2000, 3000, 4000], 99))
    assert m["mean_tpot_ms"] == pytest.approx(200.0)  # the single-token request has no TPOT
    assert m["p90_e2el_ms"] == pytest.approx(np.percentile([2000, 4000, 6000, 8000], 90))
    assert m["mean_normalized_latency_s_per_token"] == pytest.approx(0.025)


def test_cli_latency_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", "--model", tiny_model_dir, "--num-prompts", "6", "--input-len", "8",
               "--output-len", "4", "--request-rate", "50", "--no-compile", "--output-json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Mean TTFT (ms):" in text and "P99 normalized latency (s/token):" in text
    r = json.loads(out.read_text())
    assert r["completed"] == 6 and r["total_output_tokens"] == 24 and r["total_input_tokens"] == 48
    assert r["request_rate"] == 50
    assert 0 < r["mean_ttft_ms"] <= r["mean_e2el_ms"]
    # every request made 4 tokens, so normalized latency is e2e latency / 4
    assert r["mean_normalized_latency_s_per_token"] == pytest.approx(r["mean_e2el_ms"] / 1e3 / 4)
    assert r["p99_tpot_ms"] >= r["median_tpot_ms"] > 0
    assert r["request_throughput"] == pytest.approx(6 / r["duration"])
