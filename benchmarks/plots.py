#!/usr/bin/env python
"""Pictures for benchmarks/README.md: a throughput bar chart across systems, and a Gantt chart of one layer's
schedule per stream from measured timings. Core: nanoflow_compiler.bench.plots.

    python benchmarks/plots.py bar benchmarks/results/*.json -o benchmarks/results/throughput.png
    python benchmarks/plots.py gantt layer_timings.json -o benchmarks/results/gantt.png

`bar` reads result JSONs (ours and the peers'; skipped peers are listed, not drawn) and draws NanoFlow's C/(2P) from
the first result that has it. `gantt` reads measured records: a JSON list of [stream, op, start_ms, end_ms] (or
objects with those keys, optionally "class" and "layer"), or {"records": [...], "plot_layers": [...]} as
layer_gantt.py writes it (--layers overrides which layers are drawn); or, with --chrome-trace, the GPU kernels of a
torch.profiler trace (`prof.export_chrome_trace(path)`), one row per CUDA stream, cut to --window START END ms.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nanoflow_compiler.bench.args import script_main
from nanoflow_compiler.bench.plots import gantt, records_from_chrome_trace, throughput_bar


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plots.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    bar = sub.add_parser("bar", help="throughput bar chart from result JSONs")
    bar.add_argument("results", nargs="+")
    bar.add_argument("-o", "--output", required=True)
    bar.add_argument("--title", default="Offline throughput")
    bar.add_argument("--label-by", choices=["system", "system+dataset"], default="system")
    g = sub.add_parser("gantt", help="Gantt chart of one layer from measured (stream, op, start_ms, end_ms) records")
    g.add_argument("timings", help="records JSON, or a torch.profiler Chrome trace with --chrome-trace")
    g.add_argument("--chrome-trace", action="store_true", help="read GPU kernels from a torch.profiler trace")
    g.add_argument("--window", type=float, nargs=2, metavar=("START_MS", "END_MS"), default=None,
                   help="only kernels inside this window of the trace clock (one layer)")
    g.add_argument("--layers", type=int, nargs="+", default=None,
                   help="only records of these layers (default: the file's plot_layers, else all)")
    g.add_argument("-o", "--output", required=True)
    g.add_argument("--title", default="One decoder layer, per stream (measured)")
    return p


def load_records(path: str, layers: list[int] | None = None) -> list[tuple]:
    """Records of the JSON; object records with a "layer" are kept only for `layers` (default: the file's
    "plot_layers", as layer_gantt.py writes it; None keeps all)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict):
        layers = layers if layers is not None else data.get("plot_layers")
        data = data.get("records")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of timing records or {{'records': [...]}}")
    records = []
    for r in data:
        if isinstance(r, dict):
            if layers is not None and "layer" in r and r["layer"] not in layers:
                continue
            try:
                r = [r["stream"], r["op"], r["start_ms"], r["end_ms"], *([r["class"]] if "class" in r else [])]
            except KeyError as e:
                raise ValueError(f"{path}: timing record {r!r} lacks {e}") from e
        records.append(tuple(r))
    return records


def bar_rows(paths: list[str], label_by: str) -> tuple[list[tuple[str, float, float | None]], float | None]:
    rows, optimal = [], None
    for path in paths:
        if not Path(path).is_file():
            print(f"{path}: no such result; not drawn")
            continue
        result = json.loads(Path(path).read_text())
        if result.get("skipped"):
            print(f"{path}: {result.get('system')} skipped ({result.get('reason')}); not drawn")
            continue
        if "tokens_per_second" not in result:
            print(f"{path}: not a throughput result; not drawn")
            continue
        label = str(result.get("system", Path(path).stem))
        if label_by == "system+dataset":
            w = result.get("workload") or result.get("workload_args") or {}
            lengths = [w.get(f"mean_{k}_len", w.get(f"{k}_len")) for k in ("input", "output")]
            label += f"\n{w.get('dataset', '')} " + "/".join(f"{x:g}" if x is not None else "?" for x in lengths)
        rows.append((label, float(result["tokens_per_second"]), result.get("output_tokens_per_second")))
        optimal = optimal or (result.get("optimal") or {}).get("optimal_tokens_per_second")
    return rows, optimal


def run(args: argparse.Namespace) -> int:
    if args.kind == "bar":
        rows, optimal = bar_rows(args.results, args.label_by)
        out = throughput_bar(rows, args.output, args.title, optimal)
    else:
        if args.chrome_trace:
            window = args.window or (None, None)
            records = records_from_chrome_trace(json.loads(Path(args.timings).read_text()), *window)
        else:
            records = load_records(args.timings, args.layers)
        out = gantt(records, args.output, args.title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(run, parser()))
