#!/usr/bin/env python
"""TensorRT-LLM as a peer, through `trtllm-bench ... throughput`, on exactly our prompts (every dataset, since
trtllm-bench reads token ids and output lengths from a file); when it is not installed it says so, writes a
"skipped" JSON and exits 0.

    python benchmarks/peers/trtllm_runner.py --model llama-3-8b --peer-model meta-llama/Meta-Llama-3-8B \
        --input-len 1024 --output-len 512 --num-prompts 1000 --output-json results/trtllm.json

The numbers come from trtllm-bench's PERFORMANCE OVERVIEW (Total Latency, Total Output Throughput); our JSON keeps
its report too. (Named `*_runner.py` for symmetry with the other external peers.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from _common import extra_args, finish, installed, parser, peer_model, skip, workload
from _external import failed, run_command
from nanoflow_compiler.bench.args import script_main
from nanoflow_compiler.bench.optimal import model_config

SYSTEM = "tensorrt-llm"
_FIELDS = {
    "total_latency_ms": r"Total Latency \(ms\):\s*([\d.]+)",
    "request_throughput": r"Request Throughput \(req/sec\):\s*([\d.]+)",
    "output_throughput": r"Total Output Throughput \(tokens/sec\):\s*([\d.]+)",
    "total_token_throughput": r"Total Token Throughput \(tokens/sec\):\s*([\d.]+)",
}


def parse_overview(text: str) -> dict:
    """The numbers of trtllm-bench's PERFORMANCE OVERVIEW block; raises ValueError if one is missing."""
    found = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        if m is None:
            raise ValueError(f"trtllm-bench output has no {pattern.split(chr(92))[0].strip()!r} line")
        found[key] = float(m.group(1))
    return found


def write_dataset(args: argparse.Namespace, path: Path):
    config = model_config(args.model)
    w = workload(args, config.vocab_size, config.max_position_embeddings)
    with path.open("w") as f:
        for i, r in enumerate(w.requests):
            f.write(json.dumps({"task_id": i, "input_ids": r.prompt_token_ids, "output_tokens": r.output_len}) + "\n")
    return w


def command(args: argparse.Namespace, dataset: str, report: str) -> list[str]:
    cmd = ["trtllm-bench", "--model", peer_model(args)]
    if Path(peer_model(args)).is_dir():
        cmd += ["--model_path", peer_model(args)]
    cmd += ["throughput", "--dataset", dataset, "--backend", "pytorch", "--report_json", report]
    if args.max_num_batched_tokens:
        cmd += ["--max_num_tokens", str(args.max_num_batched_tokens)]
    return cmd + extra_args(args)


def run(args: argparse.Namespace) -> int:
    if not installed(None, "trtllm-bench"):
        return skip(SYSTEM, "TensorRT-LLM is not installed (no trtllm-bench on PATH)", args)
    with tempfile.TemporaryDirectory() as tmp:
        w = write_dataset(args, Path(tmp) / "dataset.jsonl")
        report = Path(tmp) / "report.json"
        cmd = command(args, str(Path(tmp) / "dataset.jsonl"), str(report))
        status, output = run_command(cmd)
        if status != 0:
            return failed(SYSTEM, cmd, status, output, args)
        overview = parse_overview(output)
        raw_report = json.loads(report.read_text()) if report.is_file() else None
    elapsed = overview["total_latency_ms"] / 1e3
    output_tokens = round(overview["output_throughput"] * elapsed)
    return finish(SYSTEM, args, elapsed, len(w.requests), w.num_prompt_tokens, output_tokens, {
        "workload": w.describe(), "peer_command": cmd, "peer_overview": overview, "peer_report": raw_report,
        "output_tokens_source": "trtllm-bench output throughput x total latency"})


if __name__ == "__main__":
    sys.exit(script_main(run, parser("trtllm_runner.py", __doc__.splitlines()[0])))
