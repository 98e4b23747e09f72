"""What every benchmark result carries besides its numbers, and the two output formats users already read.

The printed lines are vLLM's `benchmark_throughput` lines, character for character, and the JSON starts with the keys
of vLLM's `--output-json` (elapsed_time, num_requests, total_num_tokens, requests_per_second, tokens_per_second), so
that scripts written for vLLM read ours. Everything else (device, versions, commit, options) comes after them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

VLLM_KEYS = ("elapsed_time", "num_requests", "total_num_tokens", "requests_per_second", "tokens_per_second")


def vllm_throughput_result(elapsed: float, num_requests: int, prompt_tokens: int, output_tokens: int) -> dict:
    if elapsed <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed}")
    total = prompt_tokens + output_tokens
    return {
        "elapsed_time": elapsed,
        "num_requests": num_requests,
        "total_num_tokens": total,
        "requests_per_second": num_requests / elapsed,
        "tokens_per_second": total / elapsed,
        # not in vLLM's JSON, but in its printed line
        "output_tokens_per_second": output_tokens / elapsed,
        "total_num_prompt_tokens": prompt_tokens,
        "total_num_output_tokens": output_tokens,
    }


def vllm_throughput_lines(result: dict) -> str:
    """vLLM's three lines (including its two spaces after the colon)."""
    return (
        f"Throughput: {result['requests_per_second']:.2f} requests/s, "
        f"{result['tokens_per_second']:.2f} total tokens/s, "
        f"{result['output_tokens_per_second']:.2f} output tokens/s\n"
        f"Total num prompt tokens:  {result['total_num_prompt_tokens']}\n"
        f"Total num output tokens:  {result['total_num_output_tokens']}"
    )


def environment(device: str | torch.device) -> dict:
    """Where the numbers came from: device, library versions, commit and the command line that ran."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        dev = {"type": "cuda", "name": props.name, "sm_count": props.multi_processor_count,
               "total_memory_bytes": props.total_memory, "cuda": torch.version.cuda}
    else:
        dev = {"type": device.type, "name": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    return {
        "device": dev,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "transformers": _version("transformers"),
            "nanoflow_compiler": _version("nanoflow-compiler"),
        },
        "git": git_info(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hostname": platform.node(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_info() -> dict:
    """The commit of the checkout this package runs from, and whether it had uncommitted changes.

    A copy without .git (the device machine gets the work tree only) names its commit in NANOFLOW_GIT_COMMIT.
    """
    if os.environ.get("NANOFLOW_GIT_COMMIT"):
        return {"commit": os.environ["NANOFLOW_GIT_COMMIT"], "dirty": None, "source": "NANOFLOW_GIT_COMMIT"}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def peak_memory_bytes(device: str | torch.device) -> dict:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return {"kind": "cuda_max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(device),
                "reserved_bytes": torch.cuda.max_memory_reserved(device)}
    try:
        import resource

        return {"kind": "process_max_rss", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    except ImportError:  # not on POSIX
        return {"kind": "unavailable", "bytes": None}


def write_json(path: str | os.PathLike, data: dict) -> None:
    """vLLM's keys first, then the rest; NaN/inf are not valid JSON, so they are refused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = {k: data[k] for k in VLLM_KEYS if k in data} | {k: v for k, v in data.items() if k not in VLLM_KEYS}
    path.write_text(json.dumps(ordered, indent=4, allow_nan=False) + "\n")
