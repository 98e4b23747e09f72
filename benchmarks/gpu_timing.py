"""Timing helpers shared by the GPU benchmarks: CUDA-graph replay timing, environment record, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def capture(body: Callable[[], None], stream: torch.cuda.Stream | None = None) -> torch.cuda.CUDAGraph:
    """Capture `body` into a graph; with `stream`, the body runs forked onto that (partition) stream and joined."""
    cap = torch.cuda.Stream()

    def forked() -> None:
        if stream is None:
            body()
            return
        stream.wait_stream(cap)
        with torch.cuda.stream(stream):
            body()
        cap.wait_stream(stream)

    cap.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(cap):  # warm-up outside capture: Triton compiles, cuBLAS creates its handles
        forked()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=cap):
        forked()
    torch.cuda.synchronize()
    return graph


def time_graph(graph: torch.cuda.CUDAGraph, replays: int = 10, reps: int = 7, warm_ms: float = 50.0) -> float:
    """Median milliseconds per replay (events around `replays` back-to-back replays, `reps` times), after replaying
    for at least `warm_ms` so that clocks and caches are in their steady state."""
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warm_ms:
        graph.replay()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times)


def time_fn(fn: Callable[[], None], stream: torch.cuda.Stream | None = None, per_graph: int = 10,
            replays: int = 5, reps: int = 7) -> float:
    """Median ms of one call of `fn`, warmed up, captured `per_graph` times into one graph on `stream`."""
    def body():
        for _ in range(per_graph):
            fn()

    return time_graph(capture(body, stream), replays, reps) / per_graph


def environment() -> dict:
    """Device, versions, commit and command line, recorded with every result."""
    import triton  # not at the top: CPU benchmarks import this module too

    from nanoflow_compiler.bench.report import git_info

    props = torch.cuda.get_device_properties(0)
    commit = git_info()["commit"] or "unknown"
    return {
        "device": props.name, "sms": props.multi_processor_count, "l2_bytes": getattr(props, "L2_cache_size", None),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
        "python": platform.python_version(), "commit": commit, "command": " ".join([sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json and, on the device tool, a copy under $OUT."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"{name}.json").write_text(text)
    return path
