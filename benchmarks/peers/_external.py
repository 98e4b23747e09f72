"""Running a peer's own benchmark CLI: the command, its output shown live, and failures recorded, not hidden."""

from __future__ import annotations

import argparse
import subprocess

from nanoflow_compiler.bench.args import options_from_args
from nanoflow_compiler.bench.report import environment, write_json


def run_command(cmd: list[str], timeout: float | None = None) -> tuple[int, str]:
    """Run `cmd`, echoing its output; returns (exit status, output)."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(timeout=timeout), "".join(lines)


def failed(system: str, cmd: list[str], status: int, output: str, args: argparse.Namespace) -> int:
    """An installed peer that failed: exit 1 and keep the tail of its output in the JSON."""
    tail = output.strip().splitlines()[-20:]
    print(f"{system}: its benchmark failed with exit status {status}")
    if args.output_json:
        write_json(args.output_json, {"system": system, "skipped": True, "failed": True, "exit_status": status,
                                      "reason": f"benchmark command failed (exit {status})", "command": cmd,
                                      "output_tail": tail, **environment(options_from_args(args).resolved_device())})
    return 1
