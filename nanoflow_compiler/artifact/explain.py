"""`nanoflow explain --artifact DIR`: the stored schedule as text, read from schedule.json alone (nothing is traced).

Layers come from the IR itself: an op belongs to the layer whose parameters it reads, else to the latest layer among
the values it reads, the rule `nanoflow explain` applies to a traced graph.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.ir import BucketPlan, Ref, ScheduleIR, Seq
from .manifest import read_manifest, verify_files
from .schedule import read_schedule


def explain_artifact(path: str | Path, tokens: int | None, layer: int) -> list[str]:
    from ..cli.explain import _LAYER, _detail, _summary

    root = Path(path)
    manifest = read_manifest(root)
    verify_files(root, manifest, [manifest["schedule"]["file"]])
    irs = read_schedule(root / manifest["schedule"]["file"])
    model, device, versions = manifest["model"], manifest["device"], manifest["versions"]
    lines = [f"nanoflow explain: artifact {root} ({model['name']}, {model['dtype']}), exported for {device['name']} "
             f"with {device['sm_count']} SMs by nanoflow {versions['nanoflow']}, torch {versions['torch']}"]
    for ir in irs:
        bucket = ir.bucket(tokens) if tokens is not None else ir.buckets[-1]
        lines.append(f"graph {ir.signature.graph_hash}: buckets {[b.tokens for b in ir.buckets]}, plan from the "
                     f"{ir.provenance.plan_source} model, executor {ir.provenance.executor}")
        lines += [f"  note: {note}" for note in ir.provenance.notes]
        lines.append(f"bucket {bucket.tokens}: {len(bucket.ops)} ops ({sum(op.stream is not None for op in bucket.ops)}"
                     " on streams)")
        lines.append("nano-batches: " + "; ".join(f"{c} {len(s)} x {s}" for c, s in bucket.nano_batches.items()))
        lines.append(f"cut points: {bucket.cuts}")
        lines.append("streams: " + "; ".join(f"{s.id}: {'+'.join(s.classes)} on {s.sms} SMs" for s in bucket.streams))
        if bucket.predicted_s is not None:
            lines.append(f"predicted time (analytical cost model): {bucket.predicted_s * 1e3:.3f} ms")
        by_layer: dict[int, list] = {}
        for op, index in zip(bucket.ops, _layers(ir, bucket, _LAYER)):
            by_layer.setdefault(index, []).append(op)
        if layer in by_layer:
            lines.append(f"layer {layer}, per stream in issue order:")
            lines += _detail(by_layer[layer], bucket)
        lines.append("all layers:")
        lines += _summary(by_layer)
    return lines


def _layers(ir: ScheduleIR, bucket: BucketPlan, pattern) -> list[int]:
    """The layer of each op of `bucket`, in order (-1 before the first layer). Layers are per graph node: all nano-ops
    and the allocation of one node share one, and a buffer an op writes (out=, copy_to) carries its layer onwards."""
    layer_of = {i.name: int(m.group(1)) for i in ir.signature.inputs if (m := pattern.search(i.name))}
    node_layer: dict[str, int] = {}
    for op in bucket.ops:
        reads = [*op.args, *op.kwargs.values(), *(r for r in op.copy_to if r is not None)]
        index = max([node_layer.get(op.node, -1)] + [layer_of.get(name, -1) for arg in reads for name in _refs(arg)])
        node_layer[op.node] = index
        written = [*op.outputs, *_refs(op.kwargs.get("out")), *(n for r in op.copy_to for n in _refs(r))]
        for name in written:
            if name is not None:
                layer_of[name] = index
    return [node_layer[op.node] for op in bucket.ops]


def _refs(arg) -> list[str]:
    if isinstance(arg, Ref):
        return [arg.value]
    if isinstance(arg, Seq):
        return [name for item in arg.items for name in _refs(item)]
    return []
