"""Pictures of results: a throughput bar chart across systems, and a Gantt chart of one layer's schedule per stream.

The Gantt chart takes measured records `(stream, op, start_ms, end_ms)` (from CUDA events or a profiler trace), so
that it shows what ran, not what the scheduler intended. matplotlib is imported lazily with the Agg backend, so that
plotting works on headless machines and importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

# One colour per resource class, guessed from the op name when the caller gives no class.
_CLASS_COLOURS = {"compute": "#4C72B0", "memory": "#DD8452", "network": "#55A868", "light": "#8C8C8C"}
_MEMORY_HINTS = ("attn", "attention", "kv", "gemv", "decode")
_NETWORK_HINTS = ("all_reduce", "allreduce", "all_gather", "reduce_scatter", "nccl")
_COMPUTE_HINTS = ("gemm", "proj", "linear", "matmul", "addmm", "bmm", "lm_head")


def op_class(op: str) -> str:
    """Network, then compute (so that `qkv_proj` is a GEMM, not KV traffic), then memory; the rest is light."""
    name = op.lower()
    if name.split("[")[0].split(".")[-1] == "mm":
        return "compute"
    for cls, hints in (("network", _NETWORK_HINTS), ("compute", _COMPUTE_HINTS), ("memory", _MEMORY_HINTS)):
        if any(h in name for h in hints):
            return cls
    return "light"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_bar(
    systems: Sequence[tuple[str, float, float | None]], path: str | Path, title: str = "Throughput",
    optimal: float | None = None,
) -> Path:
    """Bars of total tokens/s per system, with output tokens/s as an inner bar where known; `optimal` draws
    NanoFlow's C/(2P) as a line. `systems` holds (label, total tokens/s, output tokens/s or None)."""
    if not systems:
        raise ValueError("no systems to plot")
    plt = _pyplot()
    labels = [s[0] for s in systems]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(systems) + 2), 4.0))
    xs = range(len(systems))
    bars = ax.bar(xs, [s[1] for s in systems], color="#4C72B0", label="total tokens/s")
    outs = [s[2] if s[2] is not None else 0.0 for s in systems]
    if any(s[2] is not None for s in systems):
        ax.bar(xs, outs, width=0.4, color="#DD8452", label="output tokens/s")
    for bar, s in zip(bars, systems, strict=True):
        ax.annotate(f"{s[1]:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    if optimal is not None and optimal <= 3 * max(s[1] for s in systems):
        ax.axhline(optimal, color="black", linestyle="--", linewidth=1, label=f"optimal C/(2P) = {optimal:,.0f}")
    elif optimal is not None:  # a line far above the bars would flatten them
        title += f"\n(optimal C/(2P) = {optimal:,.0f} tokens/s, off scale)"
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set_ylabel("tokens/s")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def gantt(
    records: Iterable[Sequence], path: str | Path, title: str = "One layer, per stream",
) -> Path:
    """One row per stream, one box per op from start_ms to end_ms, coloured by resource class. Records are
    (stream, op, start_ms, end_ms) or (stream, op, start_ms, end_ms, class)."""
    rows = [tuple(r) for r in records]
    if not rows:
        raise ValueError("no timing records to plot")
    for r in rows:
        if len(r) not in (4, 5):
            raise ValueError(f"a timing record is (stream, op, start_ms, end_ms[, class]); got {r!r}")
        if float(r[3]) < float(r[2]):
            raise ValueError(f"record {r!r} ends before it starts")
    plt = _pyplot()
    streams = list(dict.fromkeys(str(r[0]) for r in rows))
    t0 = min(float(r[2]) for r in rows)
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(streams) + 1.6))
    labelled = 0.015 * (max(float(r[3]) for r in rows) - t0)  # narrower boxes get no label: it would not fit
    seen = set()
    for r in rows:
        stream, op, start, end = str(r[0]), str(r[1]), float(r[2]) - t0, float(r[3]) - t0
        cls = r[4] if len(r) == 5 else op_class(op)
        y = streams.index(stream)
        ax.barh(y, end - start, left=start, height=0.6, color=_CLASS_COLOURS.get(cls, "#8C8C8C"),
                edgecolor="white", label=None if cls in seen else cls)
        seen.add(cls)
        if end - start > labelled:
            ax.text(start + (end - start) / 2, y, op, ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(range(len(streams)), streams)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, plt, path)


def records_from_chrome_trace(trace: dict, start_ms: float | None = None, end_ms: float | None = None) -> list[tuple]:
    """Gantt records from a torch.profiler Chrome trace (`prof.export_chrome_trace`): every GPU kernel, one row
    per CUDA stream, optionally only those inside [start_ms, end_ms] of the trace clock (one layer's window)."""
    events = trace.get("traceEvents", trace) if isinstance(trace, dict) else trace
    records = []
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X" or e.get("cat") != "kernel":
            continue
        start, end = e["ts"] / 1e3, (e["ts"] + e.get("dur", 0)) / 1e3
        if (start_ms is not None and start < start_ms) or (end_ms is not None and end > end_ms):
            continue
        stream = (e.get("args") or {}).get("stream", e.get("tid"))
        records.append((f"stream {stream}", _short(e["name"]), start, end))
    if not records:
        raise ValueError("the trace has no GPU kernel events in the window")
    return records


def _short(kernel: str, width: int = 32) -> str:
    """Kernel names are C++ signatures; keep the function name."""
    head = kernel.split("(")[0].split("<")[0].split()
    name = (head[-1] if head else kernel).split("::")[-1]
    return name if len(name) <= width else name[: width - 1] + "…"


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
