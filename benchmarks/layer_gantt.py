#!/usr/bin/env python
"""Measured per-op timings of Llama-3-8B decoder layers under the nanoflow backend, and their Gantt chart.

A model of `--layers` Llama-3-8B layers (random bf16 weights) takes layer_overlap.py's mostly-decode batch (1008
decode tokens, one 16-token prefill chunk, 1024 tokens) and is compiled with the `nanoflow` backend (overlap on:
nano-batches on SM-partitioned streams; `--options` changes the plan). After `--warmup` calls, one call runs with
CUDA events around every op on its stream (runtime/executors/timings.py; the stream executor, outside graph capture)
and is written as `layer_timings.json`, the records `plots.py gantt` reads; the PNG shows the middle layers, where
the pipeline is in its steady state. The same call without events is timed too, to show what the events cost.

    python benchmarks/layer_gantt.py --layers 4 --output-dir benchmarks/results/h100     # on the GPU
    python benchmarks/layer_gantt.py --device cpu --output-dir /tmp/gantt                # tiny config, wall clock
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from decode_batch import PAGE, mostly_decode_batch

from nanoflow_compiler import backend
from nanoflow_compiler.artifact.explain import _layers  # the IR's layer rule, as `nanoflow explain` applies it
from nanoflow_compiler.bench.args import script_main
from nanoflow_compiler.bench.plots import gantt
from nanoflow_compiler.cli.argtypes import json_object
from nanoflow_compiler.cli.explain import _LAYER
from nanoflow_compiler.models import preset_config, random_model
from nanoflow_compiler.runtime.attention import AttnMetadata
from nanoflow_compiler.runtime.executors.timings import step_timings

# The CPU shape: small enough for a test, still a GQA Llama with nano-batches on two streams.
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
TINY_BATCH = dict(tokens=64, chunk=8, ctx=48, jitter=16)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layer_gantt.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[-1])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu runs a tiny config in float32 and times ops with the wall clock")
    p.add_argument("--layers", type=int, default=4, help="decoder layers in the model")
    p.add_argument("--plot-layers", type=int, nargs="+", default=None,
                   help="layers the PNG shows (default: all but the first and the last, when there are 3 or more)")
    p.add_argument("--ctx", type=int, default=1024, help="context length of the decode requests")
    p.add_argument("--options", type=json_object, default={}, help="nanoflow compile options (JSON), e.g. "
                   "'{\"sm_plan\": {\"COMPUTE\": 96, \"MEMORY\": 36}}'")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (Triton compiles, partitions form)")
    p.add_argument("--repeats", type=int, default=5, help="plain (event-free) calls timed for comparison")
    p.add_argument("--output-dir", default="benchmarks/results/h100")
    return p


def build(args: argparse.Namespace):
    """The model, its inputs (input_ids, positions, metadata) and what describes the batch."""
    tiny = args.device == "cpu"
    dtype = torch.float32 if tiny else torch.bfloat16
    config = preset_config("llama-3-8b", num_hidden_layers=args.layers, **(TINY if tiny else {}))
    shape = dict(TINY_BATCH) if tiny else dict(tokens=1024, chunk=16, ctx=args.ctx, jitter=64)
    gen = torch.Generator(device=args.device).manual_seed(0)
    batch = mostly_decode_batch(shape["ctx"], gen, shape["tokens"], shape["chunk"], shape["jitter"])
    model = random_model(config, dtype, args.device)
    model.allocate_kv_cache(batch.num_blocks, PAGE, dtype, args.device)
    ids = torch.randint(0, config.vocab_size, (shape["tokens"],), generator=gen, device=args.device)
    meta = AttnMetadata(batch.slots, batch.req, batch.tables, batch.last)
    return model, (ids, batch.pos, meta), {**shape, "model": "llama-3-8b" + (" (tiny)" if tiny else ""),
                                           "layers": args.layers, "dtype": str(dtype), "weights": "random",
                                           "kv_tokens": batch.kv_tokens, "requests": len(batch.lens)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_ms(fn, inputs, device: str, repeats: int) -> float:
    """Median ms of one call without per-op events."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn(*inputs)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    if args.layers < 1:
        raise ValueError(f"--layers must be at least 1, got {args.layers}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from e2e_overlap import ensure_backend

    ensure_backend()
    model, inputs, workload = build(args)
    # overlap asked for: the nano-batched schedule is the picture (without a searched plan the CUDA default is one stream)
    options = {"executor": "stream" if args.device == "cuda" else "sequential", "overlap": True, **args.options}
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=False, fullgraph=True, options=options)
        for _ in range(max(1, args.warmup)):
            fn(*inputs)
        sync(args.device)
        schedule = compiled[0]
        ir = getattr(schedule, "ir", None)
        if ir is None:
            raise ValueError(f"the nanoflow backend fell back to the traced graph: {schedule.reason}")
        bucket = ir.buckets[0]
        layer_of = {op.id: layer for op, layer in zip(bucket.ops, _layers(ir, bucket, _LAYER))}
        plain = plain_ms(fn, inputs, args.device, args.repeats)
        with step_timings(schedule, layer_of) as records:
            fn(*inputs)
    plot_layers = args.plot_layers or (list(range(1, args.layers - 1)) if args.layers >= 3 else list(range(args.layers)))
    rows = [r.to_json() for r in records]
    span = max(r["end_ms"] for r in rows) - min(r["start_ms"] for r in rows)
    payload = {
        "benchmark": "layer_gantt", "environment": environment(args.device), "workload": workload,
        "compile_options": options, "executor": ir.provenance.executor, "status": schedule.status(),
        "notes": ir.provenance.notes, "plan": {"tokens": bucket.tokens, "nano_batches": bucket.nano_batches,
                                               "streams": [vars(s) for s in bucket.streams]},
        "clock": "CUDA events on each op's stream" if args.device == "cuda" else "wall clock, ops one after another",
        "plain_call_ms": plain, "timed_call_ms": span, "plot_layers": plot_layers, "records": rows,
    }
    path = out / "layer_timings.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    shown = [(r["stream"], r["op"], r["start_ms"], r["end_ms"], r["class"]) for r in rows if r["layer"] in plot_layers]
    title = (f"{workload['model']}, layers {plot_layers} of {args.layers}, {workload['tokens']} tokens, measured "
             f"({'CUDA events' if args.device == 'cuda' else 'wall clock'})")
    png = gantt(shown, out / "gantt_layer.png", title)
    per_layer = {}
    for r in rows:
        per_layer.setdefault(r["layer"], []).append(r)
    print(f"{len(rows)} ops timed; call {span:.3f} ms with events, {plain:.3f} ms without (median of {args.repeats})")
    for layer, ops in sorted(per_layer.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        busy = {}
        for r in ops:
            busy[r["stream"]] = busy.get(r["stream"], 0.0) + r["end_ms"] - r["start_ms"]
        window = max(r["end_ms"] for r in ops) - min(r["start_ms"] for r in ops)
        print(f"  layer {layer}: {len(ops)} ops in {window:.3f} ms; busy " +
              ", ".join(f"{s} {t:.3f} ms" for s, t in busy.items()))
    print(f"wrote {path} and {png}")
    return 0


def environment(device: str) -> dict:
    if device == "cuda":
        from gpu_timing import environment as gpu_environment

        return gpu_environment()
    return {"device": "cpu", "torch": torch.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(script_main(run, parser()))
