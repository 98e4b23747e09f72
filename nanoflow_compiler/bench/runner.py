"""Driving our engine over a workload: build it, warm it up (compile), run the timed pass, count what came out.

The engine is used through its public step loop (`add_request`, `step`, `has_unfinished_requests`), the same way
`LLM.generate` uses it, so the benchmark measures what users get. Output tokens are counted from the step outputs
(the `new_token_ids` of each), not assumed from the workload, so a run that stops early shows it.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass

import torch

from ..models import LoadedModel, load_model
from ..runtime.sampling import SamplingParams
from .args import WARMUP_OUTPUT_LEN, BenchOptions
from .datasets import Workload, make_workload


@dataclass
class OfflineRun:
    elapsed: float
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    num_steps: int


def load(opts: BenchOptions) -> LoadedModel:
    return load_model(opts.model, dtype=opts.resolved_dtype(), device=opts.resolved_device(), seed=opts.seed)


def model_max_len(loaded: LoadedModel) -> int:
    return int(loaded.config.max_position_embeddings)


def special_token_ids(loaded: LoadedModel) -> tuple[int, ...]:
    ids = []
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(loaded.config, name, None)
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return tuple(sorted({i for i in ids if isinstance(i, int) and i >= 0}))


def build_workload(opts: BenchOptions, loaded: LoadedModel, seed: int | None = None) -> Workload:
    return make_workload(
        opts.dataset, opts.num_prompts, loaded.config.vocab_size, opts.input_len, opts.output_len,
        seed=opts.seed if seed is None else seed, max_model_len=model_max_len(loaded),
        exclude_token_ids=special_token_ids(loaded),
    )


def engine_config(opts: BenchOptions, compile_options: dict | None = None):
    """An EngineConfig from the options; fields the user did not set keep the engine's defaults."""
    from ..runtime.engine import EngineConfig

    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    kwargs = {"dtype": opts.resolved_dtype(), "device": opts.resolved_device(), "compile": opts.compile}
    if opts.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = opts.max_num_batched_tokens
    if opts.max_num_seqs is not None:
        kwargs["max_num_seqs"] = opts.max_num_seqs
    if opts.token_buckets is not None:
        kwargs["token_buckets"] = list(opts.token_buckets)
    if opts.async_scheduling is not None:
        kwargs["async_scheduling"] = opts.async_scheduling
    options = opts.compile_options if compile_options is None else compile_options
    if options:
        kwargs["compile_options"] = dict(options)
    if opts.backend is not None:
        if "backend" not in fields:
            raise ValueError(f"this engine cannot select a torch.compile backend (asked for {opts.backend!r})")
        kwargs["backend"] = opts.backend
    return EngineConfig(**kwargs)


def build_engine(loaded: LoadedModel, config):
    from ..runtime.engine import LLMEngine

    return LLMEngine(loaded.model, loaded.tokenizer, config)


def sampling_params(output_len: int, ignore_eos: bool) -> SamplingParams:
    """vLLM's throughput benchmark settings: plain sampling at temperature 1, exactly `output_len` tokens."""
    return SamplingParams(temperature=1.0, top_p=1.0, max_tokens=output_len, ignore_eos=ignore_eos)


def run_offline(engine, workload: Workload, ignore_eos: bool, tag: str) -> OfflineRun:
    """All requests queued at once, stepped until done; the clock includes queuing, as vLLM's does. A workload the
    engine's context cannot hold, or a run that generated fewer tokens than `ignore_eos` asks for, is an error: its
    throughput would count a different workload."""
    longest = max(len(r.prompt_token_ids) + r.output_len for r in workload.requests)
    if longest > engine.max_model_len:
        raise ValueError(f"the workload's longest request needs {longest} tokens of context but the engine holds "
                         f"{engine.max_model_len} (max_model_len, from the model and the KV cache's "
                         f"{engine.stats().get('num_total_blocks')} blocks); shorten the lengths or free GPU memory")
    start = time.perf_counter()
    for i, r in enumerate(workload.requests):
        engine.add_request(f"{tag}-{i}", list(r.prompt_token_ids), sampling_params(r.output_len, ignore_eos))
    output_tokens = steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            output_tokens += len(out.new_token_ids)
        steps += 1
    _synchronize(engine)
    elapsed = time.perf_counter() - start
    if ignore_eos and output_tokens != workload.num_output_tokens:
        raise RuntimeError(f"the run generated {output_tokens} output tokens where the workload asks for "
                           f"{workload.num_output_tokens} with ignore_eos; its throughput would not be this workload's")
    return OfflineRun(elapsed, len(workload.requests), workload.num_prompt_tokens, output_tokens, steps)


def warm_up(engine, opts: BenchOptions, loaded: LoadedModel) -> dict:
    """An untimed run of the workload's first prompt lengths on prompts of another seed (so the prefix cache cannot
    help the timed run), a few output tokens each: the prefill batches and the full decode batch are compiled or
    first used before the clock starts. (The engine compiles when it is built; its `compile_seconds` is reported.)"""
    num = opts.warmup_prompts()
    if num == 0:
        return {"warmup_prompts": 0}
    workload = build_workload(opts, loaded, seed=opts.seed + 1_000_003)
    start = time.perf_counter()
    for i, r in enumerate(workload.requests[:num]):
        params = sampling_params(min(r.output_len, WARMUP_OUTPUT_LEN), opts.ignore_eos)
        engine.add_request(f"warmup-{i}", list(r.prompt_token_ids), params)
    first_step = None
    while engine.has_unfinished_requests():
        engine.step()
        if first_step is None:
            first_step = time.perf_counter() - start
    _synchronize(engine)
    return {"warmup_prompts": num, "warmup_seconds": time.perf_counter() - start, "first_step_seconds": first_step}


def engine_facts(engine, loaded: LoadedModel, dtype: torch.dtype) -> dict:
    """KV-cache capacity and what the engine says about itself after the run."""
    stats = dict(engine.stats())
    block_size = getattr(getattr(engine, "config", None), "block_size", None)
    facts: dict = {"engine_stats": _jsonable(stats)}
    runner = getattr(engine, "runner", None)
    if runner is not None and hasattr(runner, "executor_status"):
        facts["executors"] = _jsonable(runner.executor_status())
    blocks = stats.get("num_total_blocks")
    if blocks is not None and block_size is not None:
        tokens = int(blocks) * int(block_size)
        facts["kv_cache"] = {"num_blocks": int(blocks), "block_size": int(block_size), "capacity_tokens": tokens,
                             "bytes": tokens * loaded.model.kv_bytes_per_token(dtype)}
    return facts


def release() -> None:
    """After the caller dropped its engine: collect it and forget compiled graphs, so that the next engine (ablations
    build several) starts from a clean compiler state and sizes its KV cache from the memory this one held. Dynamo's
    caches go first: they hold the compiled schedule (graphs, bound caches), which the collection after can then free."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _synchronize(engine) -> None:
    device = torch.device(getattr(getattr(engine, "config", None), "device", "cpu") or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
