#!/usr/bin/env python
"""Sample GPU telemetry (SM clock, memory used, power, utilisation) through NVML for a while and print a summary.

    python benchmarks/telemetry.py --seconds 10 --interval 0.1

The throughput and latency benchmarks run the same sampler around their timed region and store its summary in the
result JSON; on a machine without NVML the summary says unavailable and why. Core: nanoflow_compiler.bench.telemetry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from nanoflow_compiler.bench.args import script_main
from nanoflow_compiler.bench.telemetry import Telemetry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telemetry.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--device-index", type=int, default=0)
    p.add_argument("--samples", action="store_true", help="print every sample, not only the summary")
    return p


def run(args: argparse.Namespace) -> int:
    with Telemetry(args.device_index, args.interval) as t:
        time.sleep(args.seconds)
    summary = t.summary()
    if not args.samples:
        summary.pop("samples", None)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
