"""`nanoflow explain --model M --tokens T`: what the backend makes of a model, as text.

The model is built on the meta device (no weights are loaded or allocated), traced by Dynamo at T tokens and run
through the passes; nothing executes. Prints the classification of the ATen graph, the nano-batch plan and the
per-stream schedule: one decoder layer in detail, the others summarised.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from .argtypes import json_object

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="show how the nanoflow backend splits and schedules a model",
        description="Trace the model at a token count (weights on the meta device: nothing is loaded or run), run "
                    "the compiler passes and print the op classes, the nano-batch plan and the per-stream schedule.",
    )
    p.add_argument("--model", default=None,
                   help="preset name, safetensors directory or .gguf file (default: smollm2-135m-instruct)")
    p.add_argument("--tokens", type=int, default=1024, help="tokens in the iteration's batch (default 1024)")
    p.add_argument("--requests", type=int, default=None, help="requests in the batch (default: min(tokens, 64))")
    p.add_argument("--nano-batches", type=int, default=None, help="nano-batches for every op class")
    p.add_argument("--options", type=json_object, default=None, metavar="JSON",
                   help='compile options, e.g. \'{"sm_plan": {"COMPUTE": 96}}\'')
    p.add_argument("--layer", type=int, default=0, help="the layer to show in detail (default 0)")
    p.add_argument("--num-layers", type=int, default=None, help="override the model's layer count (faster)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--artifact", default=None, metavar="DIR",
                   help="show the schedule stored in `nanoflow export`'s artifact (--tokens picks the bucket)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.artifact:
        from ..artifact.explain import explain_artifact

        print("\n".join(explain_artifact(args.artifact, args.tokens, args.layer)))
        return 0
    options = dict(args.options or {})
    if args.nano_batches is not None:
        options["nano_batches"] = args.nano_batches
    if args.tokens < 2:
        raise ValueError(f"--tokens must be at least 2, got {args.tokens}")
    ctx = trace(args.model, args.tokens, args.requests or min(args.tokens, 64), options, args.dtype, args.num_layers)
    print("\n".join(explain(ctx, args.model or "smollm2-135m-instruct", args.layer)))
    return 0


class _Traced(Exception):
    """Raised by the capturing backend once the passes ran, so that the meta model is never executed."""


def trace(spec: str | None, tokens: int, requests: int, options: dict, dtype: str, num_layers: int | None):
    import torch
    from accelerate import init_empty_weights

    from ..backend import compile_graph
    from ..models.loader import model_class
    from ..options import CompileOptions
    from ..runtime.attention import AttnMetadata
    from .search import model_config

    config = model_config(spec)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    with init_empty_weights():  # parameters on meta; buffers (the rope table) are built, then moved
        model = model_class(config)(config)
    model = model.to(device="meta", dtype=getattr(torch, dtype))
    block = 16
    blocks_per_req = -(-tokens // requests) // block + 2
    model.allocate_kv_cache(requests * blocks_per_req, block, getattr(torch, dtype), "meta")
    meta_tensor = lambda n, dt=torch.int64: torch.empty(n, dtype=dt, device="meta")  # noqa: E731
    inputs = (meta_tensor(tokens), meta_tensor(tokens),
              AttnMetadata(meta_tensor(tokens), meta_tensor(tokens, torch.int32),
                           meta_tensor((requests, blocks_per_req), torch.int32), meta_tensor(requests)))
    compile_options = CompileOptions.from_dict({"token_buckets": [tokens], **options})
    captured = []

    def backend(gm, example_inputs, **_):
        captured.append(compile_graph(gm, example_inputs, compile_options, until="emit"))
        raise _Traced

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(model, backend=backend, dynamic=True, fullgraph=True)(*inputs)
    except Exception:  # Dynamo wraps the _Traced our backend raises; anything before the capture is real
        if not captured:
            raise
    return captured[0]


def explain(ctx, name: str, layer: int) -> list[str]:
    from ..passes.context import INFO

    gm, ir = ctx.graph, ctx.ir
    bucket = ir.buckets[0]
    lines = [f"nanoflow explain: {name}, {bucket.tokens} tokens, plan from the {ir.provenance.plan_source} model"]
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    lines.append(f"graph: {len(nodes)} ATen nodes -> {len(bucket.ops)} ops "
                 f"({sum(op.stream is not None for op in bucket.ops)} on streams)")
    lines.append("op classes (nodes: split into nano-ops / whole / views and scalars):")
    counts = Counter((n.meta[INFO].cls, n.meta[INFO].mode) for n in nodes)
    for cls in ("COMPUTE", "MEMORY", "NETWORK", "LIGHT"):
        split, whole = counts[(cls, "split")], counts[(cls, "whole")]
        other = sum(v for (c, m), v in counts.items() if c == cls and m not in ("split", "whole"))
        if split or whole or other:
            lines.append(f"  {cls:<8} {split:5d} split  {whole:5d} whole  {other:5d} views/scalars")
    for note in ir.provenance.notes:
        lines.append(f"  note: {note}")
    lines.append("nano-batches: " + "; ".join(f"{c} {len(s)} x {s}" for c, s in bucket.nano_batches.items()))
    lines.append(f"cut points: {bucket.cuts}")
    lines.append("streams: " + "; ".join(f"{s.id}: {'+'.join(s.classes)} on {s.sms} SMs" for s in bucket.streams))
    if bucket.predicted_s is not None:
        lines.append(f"predicted time (analytical cost model): {bucket.predicted_s * 1e3:.3f} ms")
    layers = _layers(gm, ctx)
    by_layer: dict[int, list] = {}
    for op in bucket.ops:
        by_layer.setdefault(layers.get(op.node, -1), []).append(op)
    if layer in by_layer:
        lines.append(f"layer {layer}, per stream in issue order:")
        lines += _detail(by_layer[layer], bucket)
    lines.append("all layers:")
    lines += _summary(by_layer)
    return lines


def _layers(gm, ctx) -> dict[str, int]:
    """Layer index per node: the layer whose weights it reads, else the latest layer among its inputs."""
    names = {n: info.name for n, info in zip(gm.graph.find_nodes(op="placeholder"), ctx.inputs)}
    layer: dict = {}
    for node in gm.graph.nodes:
        match = _LAYER.search(names.get(node, "")) if node.op == "placeholder" else None
        if match:
            layer[node] = int(match.group(1))
        elif node.op != "placeholder":
            layer[node] = max((layer[a] for a in node.all_input_nodes if a in layer), default=-1)
    return {n.name: i for n, i in layer.items() if i >= 0}


def _detail(ops: list, bucket) -> list[str]:
    cuts = bucket.cuts
    lines = []
    for stream in bucket.streams:
        mine = [op for op in ops if op.stream == stream.id]
        lines.append(f"  stream {stream.id} ({'+'.join(stream.classes)}, {stream.sms} SMs): {len(mine)} ops")
        for op in mine:
            span = "all tokens" if op.seg is None else f"tokens [{cuts[op.seg[0]]}, {cuts[op.seg[1]]})"
            waits = f"  waits for #{', #'.join(map(str, op.waits))}" if op.waits else ""
            lines.append(f"    #{op.id:<6} {op.node:<28} {op.target:<40} {span}{waits}")
    return lines


def _summary(by_layer: dict) -> list[str]:
    lines, previous, start = [], None, None

    def describe(ops: list) -> str:
        per_stream = Counter(op.stream for op in ops if op.stream is not None)
        streams = ", ".join(f"{n} on stream {s}" for s, n in sorted(per_stream.items()))
        return f"{streams}; {sum(len(op.waits) for op in ops)} waits; {sum(op.stream is None for op in ops)} host ops"

    keys = sorted(by_layer)
    for i, key in enumerate(keys):
        text = describe(by_layer[key])
        label = "before the layers" if key < 0 else None
        if label:
            lines.append(f"  {label}: {text}")
            continue
        if text != previous:
            if previous is not None:
                lines.append(_range(start, keys[i - 1], previous))
            previous, start = text, key
    if previous is not None:
        lines.append(_range(start, keys[-1], previous))
    return lines


def _range(first: int, last: int, text: str) -> str:
    return f"  layer {first}: {text}" if first == last else f"  layers {first}-{last}: each {text}"
