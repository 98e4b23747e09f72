"""The command-line options shared by `nanoflow bench ...`, `benchmarks/*.py` and the peer runners.

Names follow vLLM's `benchmark_throughput.py` where vLLM has the option (`--input-len`, `--output-len`,
`--num-prompts`, `--output-json`, `--max-num-batched-tokens`), so that a vLLM command line carries over.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from ..cli.argtypes import json_object
from .datasets import DATASETS

# Names only: torch is imported when an option is resolved, so that `nanoflow --help` stays fast.
DTYPES = ("bfloat16", "float16", "float32")
# The warm-up runs this many of the workload's shapes (prompts of another seed) for WARMUP_OUTPUT_LEN tokens each:
# enough for the prefill batches and the decode batch shape to be compiled / first used before the clock starts.
WARMUP_PROMPTS = 64
WARMUP_OUTPUT_LEN = 4


@dataclass
class BenchOptions:
    model: str | None = None
    dataset: str = "random"
    input_len: int | None = None
    output_len: int | None = None
    num_prompts: int = 1000
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    compile: bool = True
    compile_options: dict | None = None
    token_buckets: list[int] | None = None  # the engine pads each iteration to one of these (CUDA graphs)
    backend: str | None = None  # torch.compile backend for peers ("inductor"); None = the engine's default
    async_scheduling: bool | None = None  # None: the engine's default (on for CUDA without tensor parallelism)
    ignore_eos: bool = True
    num_warmup_prompts: int | None = None  # None: min(num_prompts, 64)
    tflops: float | None = None
    bandwidth: float | None = None
    telemetry: bool = True
    output_json: str | None = None
    # latency only
    request_rate: float = float("inf")
    tensor_parallel_size: int = 1  # ranks the model is sharded over (one GPU each); rank 0 runs the benchmark
    extra: dict = field(default_factory=dict)

    def warmup_prompts(self) -> int:
        if self.num_warmup_prompts is not None:
            return max(0, min(self.num_warmup_prompts, self.num_prompts))
        return min(self.num_prompts, WARMUP_PROMPTS)

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_dtype(self):
        """auto = bfloat16 on CUDA (what the peers run) and float32 on CPU (where bf16 matmuls are slow)."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="preset name (e.g. llama-3-8b, smollm2-135m), .gguf file or HF directory; default SmolLM2")
    p.add_argument("--dataset", choices=DATASETS, default="random",
                   help="random = fixed lengths; *-like = lengths shaped like the NanoFlow paper's traces")
    p.add_argument("--input-len", type=int, default=None, help="prompt tokens per request (random: default 1024)")
    p.add_argument("--output-len", type=int, default=None, help="output tokens per request (random: default 128)")
    p.add_argument("--num-prompts", type=int, default=1000, help="number of requests")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload (prompts and lengths)")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (auto = cuda when available)")
    p.add_argument("--output-json", default=None, help="write the results here (vLLM's keys first)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="dense batch: tokens per iteration (the engine's default if omitted)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="most requests running at once")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="run the model eagerly")
    p.add_argument("--compile-options", type=json_object, default=None,
                   help='JSON options for the nanoflow backend, e.g. \'{"nano_batches": 2, "executor": "stream"}\'')
    p.add_argument("--token-buckets", type=_int_list, default=None,
                   help="comma-separated token counts the engine pads each iteration to, e.g. 64,128,256,512")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="schedule iteration i+1 while iteration i runs (default: on for CUDA without TP)")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly --output-len tokens per request (default on: the prompts are random)")
    p.add_argument("--num-warmup-prompts", type=int, default=None,
                   help=f"requests of the untimed warm-up run, {WARMUP_OUTPUT_LEN} output tokens each "
                        f"(default: min(num-prompts, {WARMUP_PROMPTS})); 0 skips it")
    p.add_argument("--tflops", type=float, default=None, help="peak GEMM TFLOP/s C (default: measured in this run)")
    p.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in TB/s (default: measured)")
    p.add_argument("--no-telemetry", dest="telemetry", action="store_false", help="do not sample NVML")


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """Tensor parallelism, for the benchmarks of our own engine (peers and ablations have no use for it)."""
    from .. import tensor_parallel

    tensor_parallel.add_argument(p)


def add_latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--request-rate", type=_rate, default=float("inf"),
                   help="mean requests per second of the Poisson arrivals (inf = all at once)")
    p.set_defaults(num_prompts=200)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    known = BenchOptions.__dataclass_fields__
    return BenchOptions(**{k: v for k, v in vars(args).items() if k in known})


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--request-rate must be a number or inf, got {text!r}") from e
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--request-rate must be positive (or inf), got {text}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def script_main(run, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Entry point of a `benchmarks/*.py` script: bad input ends in one clear line, as `nanoflow` does."""
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user input; anything else keeps its traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
