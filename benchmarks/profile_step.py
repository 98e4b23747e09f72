#!/usr/bin/env python
"""Where an engine step's time goes: torch.profiler over steady-state steps of the throughput workload (issue 11).

    python benchmarks/profile_step.py --model llama-3-8b --device cuda --input-len 1024 --output-len 512 \
        --num-prompts 512 --skip-steps 120 --steps 5 --output-json benchmarks/results/h100/profile_1024_512.json

All requests are queued at once (as `bench throughput` does); the first `--skip-steps` steps run unprofiled (compile,
graph captures, the prefill-heavy start), then `--steps` steps are profiled. The JSON holds per-step wall time and
token count, the GPU kernel time per step (summed over streams, so overlapped streams can exceed the wall time),
the top kernels by GPU time and the top host-side ops by CPU time, the executors' counters (captures, replays) and
the environment; the Chrome trace (gzipped) goes beside it for Perfetto. The device is synchronised only before the
first and after the last profiled step, so that async scheduling (the host preparing step i+1 while the GPU runs
step i) overlaps as it does in serving: wall minus GPU time per step is then the host gap that is left.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from nanoflow_compiler.bench.args import add_engine_args, add_workload_args, options_from_args, script_main
from nanoflow_compiler.bench.report import environment, write_json
from nanoflow_compiler.bench.runner import build_engine, build_workload, engine_config, load, sampling_params


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_step.py", description=__doc__.splitlines()[0])
    add_workload_args(p)
    add_engine_args(p)
    p.add_argument("--skip-steps", type=int, default=100, help="unprofiled steps before the profiled ones")
    p.add_argument("--steps", type=int, default=5, help="steps to profile")
    p.add_argument("--top", type=int, default=25, help="rows of the kernel and host-op tables")
    p.add_argument("--backend", default=None, help="torch.compile backend (default: the engine's, nanoflow)")
    return p


def _table(events, key: str, top: int, steps: int) -> list[dict]:
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"name": e.key[:160], "calls_per_step": e.count / steps, "ms_per_step": getattr(e, key) / 1e3 / steps}
            for e in rows]


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.skip_steps < 0:
        raise ValueError("--steps must be >= 1 and --skip-steps >= 0")
    opts = options_from_args(args)
    loaded = load(opts)
    engine = build_engine(loaded, engine_config(opts))
    workload = build_workload(opts, loaded)
    for i, r in enumerate(workload.requests):
        engine.add_request(f"p-{i}", list(r.prompt_token_ids), sampling_params(r.output_len, opts.ignore_eos))
    for _ in range(args.skip_steps):
        if not engine.has_unfinished_requests():
            raise ValueError(f"the workload finished within --skip-steps={args.skip_steps}; use more prompts")
        engine.step()
    cuda = opts.resolved_device().startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    steps = []
    with torch.profiler.profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(args.steps):
            engine.step()
            if cuda and i == args.steps - 1:
                torch.cuda.synchronize()
            stats = engine.stats()
            end = time.perf_counter()
            steps.append({"seconds": end - start, "tokens": stats.get("last_num_batched_tokens"),
                          "running": stats.get("num_running")})
            start = end
    n = len(steps)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / n
    result = {
        "steps": steps,
        "mean_step_ms": 1e3 * sum(s["seconds"] for s in steps) / n,
        "gpu_kernel_ms_per_step": gpu_ms,
        "kernel_launches_per_step": sum(e.count for e in kernels) / n,
        "top_kernels": _table(kernels, "self_device_time_total", args.top, n),
        "top_host_ops": _table([e for e in events if e.device_type == torch.autograd.DeviceType.CPU],
                               "self_cpu_time_total", args.top, n),
        "executors": engine.runner.executor_status(),
        "engine_stats": {k: v for k, v in engine.stats().items() if isinstance(v, (int, float, str, type(None)))},
        "workload": {"dataset": opts.dataset, "input_len": opts.input_len, "output_len": opts.output_len,
                     "num_prompts": opts.num_prompts, "skip_steps": args.skip_steps},
        **environment(opts.resolved_device()),
    }
    if opts.output_json:
        trace = Path(opts.output_json).with_suffix(".trace.json.gz")
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
        result["trace"] = trace.name
        write_json(opts.output_json, result)
    print(f"{n} steps (async scheduling {'on' if engine.async_scheduling else 'off'}): mean "
          f"{result['mean_step_ms']:.2f} ms wall, {gpu_ms:.2f} ms of GPU kernels, "
          f"{result['kernel_launches_per_step']:.0f} kernels per step")
    for row in result["top_kernels"][:10]:
        print(f"  {row['ms_per_step']:8.3f} ms  {row['calls_per_step']:7.1f}x  {row['name'][:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
