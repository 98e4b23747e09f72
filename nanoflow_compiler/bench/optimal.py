"""How fast a workload could possibly run: NanoFlow's optimal throughput and a workload roofline.

- NanoFlow's optimal throughput (arXiv 2408.12757, section 3): tokens/s per GPU = C / (2·P), with C the measured
  dense GEMM peak and P the parameter count. Serving cannot beat doing only the weight GEMMs at peak. P counts
  **all** parameters, embedding and LM head included, as NanoFlow does (Llama-3-8B: 8.03e9); the count without the
  embedding table is reported beside it, since the lookup costs no FLOPs.
- The workload roofline of DESIGN.md "Performance model" adds the KV-cache reads that C/(2P) ignores. Per request,
  T_compute = 2·P·(input + output) / C and T_memory = (KV bytes read by its decode steps + its share of the weight
  reads) / BW, where weights are read once per iteration of `dense_batch` tokens. Nano-batch overlap happens across
  the requests of an iteration, so the overlapped bound is max(ΣT_compute, ΣT_memory) over the workload and the
  sequential bound is ΣT_compute + ΣT_memory.

C and BW are measured on the device in the same run (`measure_peaks`) or passed in (`--tflops`, `--bandwidth`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .datasets import Workload


def model_config(spec: str | None):
    """A model's config without its weights where possible (presets, HF directories), so that an optimal-throughput
    calculation for a 70B model costs nothing."""
    from ..models import PRESETS, load_model, preset_config

    if spec in PRESETS:
        return preset_config(spec)
    if spec and (Path(spec) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec)
    return load_model(spec).config


@dataclass(frozen=True)
class ParamCount:
    total: int  # everything, as NanoFlow counts
    embedding: int  # the input embedding table (a lookup, no FLOPs)
    weight_bytes_per_iteration: int  # bytes of weights one iteration reads (not the embedding table unless tied)


def count_parameters(config, dtype: torch.dtype = torch.bfloat16) -> ParamCount:
    """Parameters of a Llama-family config (fused QKV and gate/up count the same as split ones), without building
    the model, so that an 8B or 70B count costs nothing on a CPU."""
    h, inter, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    qkv_out = (heads + 2 * kv_heads) * head_dim
    qkv_bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
    o_bias = getattr(config, "attention_bias", False)
    mlp_bias = getattr(config, "mlp_bias", False)
    per_layer = (
        h * qkv_out + (qkv_out if qkv_bias else 0)
        + heads * head_dim * h + (h if o_bias else 0)
        + 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
        + 2 * h  # two RMSNorm weights
    )
    embedding = vocab * h
    tied = bool(getattr(config, "tie_word_embeddings", False))
    lm_head = 0 if tied else vocab * h
    total = embedding + layers * per_layer + h + lm_head
    element = torch.empty(0, dtype=dtype).element_size()
    read_per_iteration = total - (0 if tied else embedding)
    return ParamCount(total, embedding, read_per_iteration * element)


def kv_bytes_per_token(config, dtype: torch.dtype = torch.bfloat16) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element


def optimal_tokens_per_second(flops_per_second: float, num_params: int) -> float:
    """NanoFlow's bound: every token costs 2·P FLOPs of GEMM at the measured peak C."""
    return flops_per_second / (2 * num_params)


def roofline(
    workload: Workload, config, flops_per_second: float, bytes_per_second: float, dense_batch: int,
    dtype: torch.dtype = torch.bfloat16,
) -> dict:
    """The workload's compute and memory times and the throughput bounds they imply (see the module docstring)."""
    if flops_per_second <= 0 or bytes_per_second <= 0:
        raise ValueError("peak FLOP/s and bandwidth must be positive")
    if dense_batch < 1:
        raise ValueError(f"dense batch must be at least 1 token, got {dense_batch}")
    params = count_parameters(config, dtype)
    kv_token = kv_bytes_per_token(config, dtype)
    total_tokens = workload.num_prompt_tokens + workload.num_output_tokens
    # A request with input i and o outputs runs o-1 decode steps; step j attends to i+j cached tokens.
    kv_bytes = sum(
        kv_token * ((r.output_len - 1) * r.prompt_len + (r.output_len - 1) * r.output_len // 2)
        for r in workload.requests
    )
    weight_bytes = params.weight_bytes_per_iteration * total_tokens / dense_batch
    t_compute = 2 * params.total * total_tokens / flops_per_second
    t_memory = (kv_bytes + weight_bytes) / bytes_per_second
    overlapped, sequential = max(t_compute, t_memory), t_compute + t_memory
    return {
        "t_compute_s": t_compute,
        "t_memory_s": t_memory,
        "kv_read_bytes": kv_bytes,
        "weight_read_bytes": weight_bytes,
        "bound": "compute" if t_compute >= t_memory else "memory",
        "overlapped_tokens_per_second": total_tokens / overlapped,
        "sequential_tokens_per_second": total_tokens / sequential,
    }


@dataclass(frozen=True)
class Peaks:
    flops_per_second: float
    bytes_per_second: float
    source: str  # "measured", "given" or a mix
    detail: str

    def to_dict(self) -> dict:
        return {**asdict(self), "tflops": self.flops_per_second / 1e12, "bandwidth_tb_s": self.bytes_per_second / 1e12}


def measure_peaks(
    device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
    tflops: float | None = None, bandwidth_tb_s: float | None = None,
) -> Peaks:
    """C from a large matmul and BW from a large device-to-device copy on `device`, unless given (in TFLOP/s, TB/s).

    On CUDA: [1024×4096]×[4096×28672] in `dtype` (the shape of `H100.md`) and a 1 GiB copy. On CPU: a float32
    1024³ matmul and a 64 MiB copy, so that fractions of optimal stay meaningful on the machine that ran.
    """
    device = torch.device(device)
    parts, sources = [], set()
    if tflops is not None:
        flops, sources = tflops * 1e12, sources | {"given"}
        parts.append(f"C given: {tflops} TFLOP/s")
    else:
        flops, what = _measure_matmul(device, dtype)
        sources.add("measured")
        parts.append(what)
    if bandwidth_tb_s is not None:
        bw, sources = bandwidth_tb_s * 1e12, sources | {"given"}
        parts.append(f"BW given: {bandwidth_tb_s} TB/s")
    else:
        bw, what = _measure_copy(device)
        sources.add("measured")
        parts.append(what)
    return Peaks(flops, bw, "+".join(sorted(sources)), "; ".join(parts))


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up call (the peak, not the mean, is what a bound needs)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def _measure_matmul(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    if device.type == "cuda":
        m, k, n, dt, reps = 1024, 4096, 28672, dtype, 20
    else:
        m = k = n = 1024
        dt, reps = torch.float32, 5
    a = torch.randn(m, k, device=device, dtype=dt)
    b = torch.randn(k, n, device=device, dtype=dt)
    seconds = _best_seconds(lambda: torch.mm(a, b), device, reps)
    flops = 2 * m * k * n / seconds
    name = str(dt).removeprefix("torch.")
    return flops, f"C measured: torch.mm [{m}x{k}]x[{k}x{n}] {name} = {flops / 1e12:.1f} TFLOP/s"


def _measure_copy(device: torch.device) -> tuple[float, str]:
    nbytes = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), device, 10 if device.type == "cuda" else 5)
    bw = 2 * nbytes / seconds  # a copy reads and writes every byte
    return bw, f"BW measured: {nbytes >> 20} MiB device copy (read + write) = {bw / 1e12:.2f} TB/s"
