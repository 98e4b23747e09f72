"""What every peer runner shares: its options, the matched workload, and the result JSON (the same keys as ours).

A runner whose system is not installed prints so and writes `{"system": ..., "skipped": true, "reason": ...}`, then
exits 0, so that one device call can run every runner and keep whatever is there.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys

from nanoflow_compiler.bench.args import add_workload_args, options_from_args
from nanoflow_compiler.bench.datasets import Workload, make_workload
from nanoflow_compiler.bench.report import environment, vllm_throughput_lines, vllm_throughput_result, write_json


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_workload_args(p)
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="tokens per iteration, where supported")
    p.add_argument("--peer-model", default=None,
                   help="what to hand the peer as its model (HF hub name or directory with config and tokenizer); "
                        "default: --model")
    p.add_argument("--peer-args", default="", help="extra arguments passed verbatim to the peer's command line")
    return p


def installed(module: str | None = None, executable: str | None = None) -> bool:
    if module is not None and importlib.util.find_spec(module) is None:
        return False
    return executable is None or shutil.which(executable) is not None


def skip(system: str, reason: str, args: argparse.Namespace) -> int:
    """Say why the peer did not run and record it; exit status 0 (a missing peer is not a failure)."""
    print(f"{system}: {reason}; skipped")
    if args.output_json:
        opts = options_from_args(args)
        write_json(args.output_json, {"system": system, "skipped": True, "reason": reason,
                                      "workload_args": _workload_args(args), **environment(opts.resolved_device())})
    return 0


def workload(args: argparse.Namespace, vocab_size: int, max_model_len: int | None = None,
             exclude: tuple[int, ...] = ()) -> Workload:
    """The same requests our benchmark makes for these options (same seed, same lengths)."""
    return make_workload(args.dataset, args.num_prompts, vocab_size, args.input_len, args.output_len,
                         seed=args.seed, max_model_len=max_model_len, exclude_token_ids=exclude)


def fixed_lengths(args: argparse.Namespace) -> tuple[int, int]:
    """(input, output) of a fixed-length workload, the only kind the vLLM and SGLang CLIs can reproduce exactly."""
    if args.dataset != "random":
        raise ValueError(f"--dataset {args.dataset} needs per-request lengths, which this peer's CLI cannot take; "
                         "use --dataset random, or the trtllm runner, which reads our exact prompts")
    return args.input_len or 1024, args.output_len or 128


def finish(system: str, args: argparse.Namespace, elapsed: float, num_requests: int, prompt_tokens: int,
           output_tokens: int, extra: dict) -> int:
    """Print vLLM's lines and write the result with our keys."""
    result = vllm_throughput_result(elapsed, num_requests, prompt_tokens, output_tokens)
    result.update(system=system, workload_args=_workload_args(args), **extra)
    result.update(environment(options_from_args(args).resolved_device()))
    print(vllm_throughput_lines(result))
    if args.output_json:
        write_json(args.output_json, result)
    return 0


def peer_model(args: argparse.Namespace) -> str:
    model = args.peer_model or args.model
    if not model:
        raise ValueError("this peer needs --peer-model (or --model): an HF hub name or a directory with a config")
    return model


def extra_args(args: argparse.Namespace) -> list[str]:
    return shlex.split(args.peer_args)


def _workload_args(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("dataset", "input_len", "output_len", "num_prompts", "seed")}


def python() -> str:
    return sys.executable
