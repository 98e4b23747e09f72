"""Online latency under Poisson arrivals, measured on the engine's step loop (no HTTP in the way).

Requests arrive at exponential gaps of mean 1/rate (seeded; rate inf = all at once). Each step adds the requests whose
arrival time has passed, so a request waits in the queue exactly as long as it would behind a server. Reported per
request: TTFT (arrival to first token), TPOT (first to last token / (outputs - 1), as vLLM defines it), end-to-end
latency, and NanoFlow's normalized latency (end-to-end latency / output tokens, in s/token; the paper's SLO is
0.2 s/token). Keys follow vLLM's `benchmark_serving` JSON (mean_ttft_ms, median_ttft_ms, p99_ttft_ms, ...).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..models import LoadedModel
from . import runner
from .args import BenchOptions
from .report import environment, write_json
from .telemetry import Telemetry

PERCENTILES = (50, 90, 99)


def poisson_arrivals(n: int, rate: float, seed: int) -> np.ndarray:
    """Arrival offsets in seconds, the first at 0."""
    if not rate > 0:
        raise ValueError(f"--request-rate must be positive (or inf), got {rate}")
    if math.isinf(rate):
        return np.zeros(n)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def run_latency(opts: BenchOptions, loaded: LoadedModel | None = None) -> dict:
    loaded = loaded or runner.load(opts)
    workload = runner.build_workload(opts, loaded)
    arrivals = poisson_arrivals(len(workload.requests), opts.request_rate, opts.seed)
    config = runner.engine_config(opts)
    engine = runner.build_engine(loaded, config)
    device = opts.resolved_device()
    try:
        warm = runner.warm_up(engine, opts, loaded)
        with Telemetry(int(device.split(":")[1]) if device.startswith("cuda:") else 0,
                       enabled=opts.telemetry) as telemetry:
            per_request, duration, output_tokens = _drive(engine, workload, arrivals, opts.ignore_eos)
    finally:
        del engine
        runner.release()
    result = latency_metrics(per_request)
    total_in = workload.num_prompt_tokens
    result.update(
        duration=duration, completed=len(per_request), request_rate=opts.request_rate,
        total_input_tokens=total_in, total_output_tokens=output_tokens,
        request_throughput=len(per_request) / duration, output_throughput=output_tokens / duration,
        total_token_throughput=(total_in + output_tokens) / duration,
        system="nanoflow", model=loaded.name, workload=workload.describe(), timing=warm,
        tensor_parallel_size=opts.tensor_parallel_size,
        options={"dtype": str(opts.resolved_dtype()).removeprefix("torch."), "device": device,
                 "compile": opts.compile, "compile_options": opts.compile_options, "ignore_eos": opts.ignore_eos,
                 "tensor_parallel_size": opts.tensor_parallel_size},
        telemetry=telemetry.summary(),
    )
    result.update(environment(device))
    return result


def _drive(engine, workload, arrivals: np.ndarray, ignore_eos: bool) -> tuple[list[dict], float, int]:
    """Feed requests at their arrival times and timestamp every token; returns per-request records."""
    n = len(workload.requests)
    first: dict[int, float] = {}
    count = [0] * n
    done: dict[int, float] = {}
    next_up = 0
    output_tokens = 0
    start = time.perf_counter()
    while len(done) < n:
        now = time.perf_counter() - start
        while next_up < n and arrivals[next_up] <= now:
            r = workload.requests[next_up]
            engine.add_request(str(next_up), list(r.prompt_token_ids), runner.sampling_params(r.output_len, ignore_eos))
            next_up += 1
        if not engine.has_unfinished_requests():
            if next_up == n:
                raise RuntimeError(f"the engine went idle with {n - len(done)} request(s) never reported finished")
            time.sleep(max(0.0, arrivals[next_up] - (time.perf_counter() - start)))
            continue
        outputs = engine.step()
        t = time.perf_counter() - start
        for out in outputs:
            i = int(out.request_id)
            if out.new_token_ids:
                first.setdefault(i, t)
                count[i] += len(out.new_token_ids)
                output_tokens += len(out.new_token_ids)
            if out.finished:
                done[i] = t
    duration = time.perf_counter() - start
    records = []
    for i in range(n):
        e2e = done[i] - arrivals[i]
        outs = max(count[i], 1)
        records.append({
            "ttft": first.get(i, done[i]) - arrivals[i],
            "tpot": (done[i] - first[i]) / (count[i] - 1) if count[i] > 1 else None,
            "e2el": e2e,
            "normalized": e2e / outs,
        })
    return records, duration, output_tokens


def latency_metrics(records: list[dict]) -> dict:
    """mean/median/p90/p99 of each metric in ms (normalized latency in s/token, as the paper plots it)."""
    out: dict = {}
    for key, scale, unit in (("ttft", 1e3, "ms"), ("tpot", 1e3, "ms"), ("e2el", 1e3, "ms"),
                             ("normalized", 1.0, "s_per_token")):
        values = np.array([r[key] for r in records if r[key] is not None], dtype=float) * scale
        name = "normalized_latency" if key == "normalized" else key
        suffix = f"_{unit}"
        if values.size == 0:
            out[f"mean_{name}{suffix}"] = None
            continue
        out[f"mean_{name}{suffix}"] = float(values.mean())
        out[f"median_{name}{suffix}"] = float(np.median(values))
        for p in PERCENTILES[1:]:
            out[f"p{p}_{name}{suffix}"] = float(np.percentile(values, p))
    return out


def report(result: dict, output_json: str | None) -> None:
    """vLLM's serving summary block, with NanoFlow's normalized latency added."""
    line = "{:<40} {:<10}"
    num = "{:<40} {:<10.2f}"
    print("{s:{c}^{n}}".format(s=" Latency Benchmark Result ", n=50, c="="))
    print(line.format("Successful requests:", result["completed"]))
    print(num.format("Request rate (req/s):", result["request_rate"]))
    print(num.format("Benchmark duration (s):", result["duration"]))
    print(line.format("Total input tokens:", result["total_input_tokens"]))
    print(line.format("Total generated tokens:", result["total_output_tokens"]))
    print(num.format("Request throughput (req/s):", result["request_throughput"]))
    print(num.format("Output token throughput (tok/s):", result["output_throughput"]))
    print(num.format("Total Token throughput (tok/s):", result["total_token_throughput"]))
    sections = (("Time to First Token", "ttft", "TTFT", "ms"),
                ("Time per Output Token (excl. 1st token)", "tpot", "TPOT", "ms"),
                ("End-to-end Latency", "e2el", "E2EL", "ms"),
                ("Normalized Latency (NanoFlow)", "normalized_latency", "normalized latency", "s_per_token"))
    for title, name, label, unit in sections:
        if result.get(f"mean_{name}_{unit}") is None:
            continue
        print("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        shown = "s/token" if unit == "s_per_token" else unit
        fmt = "{:<40} {:<10.4f}" if unit == "s_per_token" else num
        for stat in ("mean", "median", "p90", "p99"):
            print(fmt.format(f"{stat.capitalize()} {label} ({shown}):", result[f"{stat}_{name}_{unit}"]))
    print("=" * 50)
    if output_json:
        write_json(output_json, result)
