"""Offline throughput of our engine, reported the way vLLM's `benchmark_throughput.py` reports it, plus how far the
result is from NanoFlow's optimal throughput and from the workload roofline."""

from __future__ import annotations

import sys
import time
import warnings

from ..models import LoadedModel
from . import runner
from .args import BenchOptions
from .optimal import Peaks, count_parameters, measure_peaks, optimal_tokens_per_second, roofline
from .report import environment, peak_memory_bytes, vllm_throughput_lines, vllm_throughput_result, write_json
from .telemetry import Telemetry


def run_throughput(
    opts: BenchOptions, loaded: LoadedModel | None = None, peaks: Peaks | None = None,
    compile_options: dict | None = None, system: str = "nanoflow",
) -> dict:
    """One warm-up run, one timed run; returns the result dict (vLLM's keys first). The model and the peaks can be
    passed in so that ablations and peers load and measure once."""
    return run_throughput_set(opts, [opts], loaded, peaks, compile_options, system)[0]


def run_throughput_set(
    opts: BenchOptions, workloads: list[BenchOptions], loaded: LoadedModel | None = None, peaks: Peaks | None = None,
    compile_options: dict | None = None, system: str = "nanoflow",
) -> list[dict]:
    """Like `run_throughput` for each of `workloads` (options that differ from `opts` in the workload only), served
    in turn by one engine built from `opts`: the engine compiles and warms up once. Give each workload its own seed,
    or the prefix cache may serve one workload's prompts from another's (each result counts its prefix hits)."""
    device, dtype = opts.resolved_device(), opts.resolved_dtype()
    load_start = time.perf_counter()
    loaded = loaded or runner.load(opts)
    load_seconds = time.perf_counter() - load_start
    built = [runner.build_workload(w, loaded) for w in workloads]  # a bad workload fails before the engine is built
    peaks = peaks or measure_peaks(device, dtype, opts.tflops, opts.bandwidth)
    config = runner.engine_config(opts, compile_options)
    runs = []
    # Fallbacks (backend missing, executor unavailable) arrive as warnings: keep them with the numbers.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init_start = time.perf_counter()
        engine = runner.build_engine(loaded, config)  # sizes the KV cache and compiles
        init_seconds = time.perf_counter() - init_start
        try:
            warm = runner.warm_up(engine, workloads[0], loaded)  # the first workload's shapes
            for w, workload in zip(workloads, built):
                if device.startswith("cuda"):
                    import torch

                    torch.cuda.reset_peak_memory_stats(device)
                hits = engine.stats().get("prefix_cache_hit_tokens", 0)
                with Telemetry(_cuda_index(device), enabled=opts.telemetry) as telemetry:
                    run = runner.run_offline(engine, workload, w.ignore_eos, tag=f"bench{len(runs)}")
                facts = runner.engine_facts(engine, loaded, dtype)
                hits = facts["engine_stats"].get("prefix_cache_hit_tokens", 0) - hits
                runs.append((w, workload, run, facts, hits, telemetry.summary(), peak_memory_bytes(device)))
        finally:
            del engine
            runner.release()
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)
    results = []
    for i, (w, workload, run, facts, hits, telemetry, peak) in enumerate(runs):
        result = vllm_throughput_result(run.elapsed, run.num_requests, run.prompt_tokens, run.output_tokens)
        result.update(system=system, model=loaded.name, model_source=loaded.source, workload=workload.describe(),
                      tensor_parallel_size=opts.tensor_parallel_size)
        result["optimal"] = optimal_report(result, workload, loaded, peaks, config, dtype, opts.tensor_parallel_size)
        result["timing"] = {"load_seconds": load_seconds, "engine_init_seconds": init_seconds,
                            "compile_seconds": facts["engine_stats"].get("compile_seconds"), **warm,
                            "steps": run.num_steps, "mean_step_seconds": run.elapsed / max(run.num_steps, 1),
                            "prefix_cache_hit_tokens": hits, "workloads_served_before": i}
        result["options"] = {
            "dtype": str(dtype).removeprefix("torch."), "device": device, "compile": opts.compile,
            "compile_options": compile_options if compile_options is not None else opts.compile_options,
            "backend": opts.backend, "ignore_eos": w.ignore_eos, "token_buckets": opts.token_buckets,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "engine_config": _config_dict(config),
        }
        result.update(facts)
        stats = facts["engine_stats"]
        result["compiled_with"] = stats.get("compile_backend") or "eager"  # what really ran, after any fallback
        result["compile_fallback"] = stats.get("compile_fallback")
        result["warnings"] = messages
        result["peak_memory"] = peak
        result["telemetry"] = telemetry
        result.update(environment(device))
        results.append(result)
    return results


def run_throughput_isolated(
    opts: BenchOptions, peaks: Peaks, compile_options: dict | None = None, system: str = "nanoflow",
) -> dict:
    """`run_throughput` in a fresh process that loads its own model: each run starts on an empty GPU, with no CUDA
    graph pools, compiled kernels or allocator state left by another setting."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_throughput, opts, None, peaks, compile_options, system).result()


def optimal_report(
    result: dict, workload, loaded: LoadedModel, peaks: Peaks, config, dtype, num_gpus: int = 1,
) -> dict:
    """Fractions of NanoFlow's optimal (C/2P per GPU, times the GPUs a tensor-parallel run uses) and of the workload
    roofline (the GPUs' FLOP/s and bandwidth added up), with everything that went into them."""
    params = count_parameters(loaded.config, dtype)
    optimal = num_gpus * optimal_tokens_per_second(peaks.flops_per_second, params.total)
    dense_batch = int(getattr(config, "max_num_batched_tokens", 0) or 0) or 1
    roof = roofline(workload, loaded.config, num_gpus * peaks.flops_per_second, num_gpus * peaks.bytes_per_second,
                    dense_batch, dtype)
    tps = result["tokens_per_second"]
    return {
        "peaks": peaks.to_dict(),
        "num_params": params.total,
        "num_params_excluding_embedding": params.total - params.embedding,
        "params_counted": "all parameters, embedding and LM head included (as NanoFlow counts)",
        "num_gpus": num_gpus,
        "optimal_tokens_per_second": optimal,
        "fraction_of_optimal": tps / optimal,
        "dense_batch_tokens": dense_batch,
        "roofline": roof,
        "fraction_of_roofline_overlapped": tps / roof["overlapped_tokens_per_second"],
        "fraction_of_roofline_sequential": tps / roof["sequential_tokens_per_second"],
    }


def optimal_lines(result: dict) -> str:
    o = result["optimal"]
    p = o["num_params"]
    params = f"{p / 1e9:.3f}B" if p >= 1e9 else f"{p / 1e6:.2f}M"
    return (
        f"Fraction of optimal: {o['fraction_of_optimal']:.4g} "
        f"(C/(2P) = {o['optimal_tokens_per_second']:.2f} tokens/s at C = {o['peaks']['tflops']:.3g} TFLOP/s, "
        f"P = {params})\n"
        f"Fraction of workload roofline: {o['fraction_of_roofline_overlapped']:.4g} overlapped, "
        f"{o['fraction_of_roofline_sequential']:.4g} sequential "
        f"({o['roofline']['bound']}-bound, BW = {o['peaks']['bandwidth_tb_s']:.3g} TB/s)"
    )


def report(result: dict, output_json: str | None) -> None:
    """Print vLLM's lines, then ours; write the JSON if asked."""
    print(vllm_throughput_lines(result))
    print(optimal_lines(result))
    t = result["timing"]
    warm = f", warm-up run {t['warmup_seconds']:.2f} s" if t.get("warmup_prompts") else ""
    print(f"Compile time: {t['compile_seconds'] or 0:.2f} s (engine start {t['engine_init_seconds']:.2f} s{warm}; "
          f"not in the throughput)")
    fallback = result.get("compile_fallback")
    if fallback:
        print(f"Note: the model ran eagerly: {fallback}")
    if output_json:
        write_json(output_json, result)


def _cuda_index(device: str) -> int:
    return int(device.split(":")[1]) if device.startswith("cuda:") else 0


def _config_dict(config) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(config):
        return {f.name: runner._jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"repr": repr(config)}
