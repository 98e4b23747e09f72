"""`nanoflow search --model M`: profile this GPU, search nano-batches, order and SM shares per token bucket, keep
the plans that a timed run confirms in the profile database that compiling with options={'plan': 'auto'} reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="profile the GPU and search the nano-batch / SM-share plan per token bucket",
        description="Profiles every op kind of the model's layer over token counts and SM counts (and pairwise "
                    "interference), searches nano-batch counts and op order (stage one) and SM shares with a MILP "
                    "(stage two) per token bucket, confirms the winner by a timed run and stores it in the profile "
                    "database. Without a GPU, --analytical shows the plan the analytical cost model gives.",
    )
    p.add_argument("--model", default=None,
                   help="preset name, safetensors directory or .gguf file (default: smollm2-135m-instruct)")
    p.add_argument("--buckets", default="1024,2048", help="comma-separated token buckets (default 1024,2048)")
    p.add_argument("--db", default=None, help="profile database (default: ~/.cache/nanoflow/profiles/<gpu>.json)")
    p.add_argument("--time-budget", type=float, default=480.0, metavar="SECONDS",
                   help="profiling time budget; past it the SM grid stays coarser and is interpolated (default 480)")
    p.add_argument("--context-len", type=int, default=1024, help="KV context per decode token (default 1024)")
    p.add_argument("--max-nano", type=int, default=4, help="most nano-batches per op class (default 4)")
    p.add_argument("--analytical", action="store_true",
                   help="no profiling: plan with the analytical cost model (works on CPU; nothing is stored)")
    p.add_argument("--output", default=None, help="also write the plans as JSON to this file")
    p.set_defaults(func=run)


def parse_buckets(text: str) -> list[int]:
    try:
        buckets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--buckets must be comma-separated integers, got {text!r}") from None
    if not buckets or any(b < 1 for b in buckets):
        raise ValueError(f"--buckets needs positive token counts, got {text!r}")
    return sorted(set(buckets))


def model_config(spec: str | None):
    """A model's config without its weights where possible (presets, HF directories)."""
    from ..models import PRESETS, load_model, preset_config

    if spec in PRESETS:
        return preset_config(spec)
    if spec and (Path(spec) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec, local_files_only=True)
    return load_model(spec).model.config


def run(args: argparse.Namespace) -> int:
    buckets = parse_buckets(args.buckets)
    if args.max_nano < 1:
        raise ValueError("--max-nano must be at least 1")
    from ..search.cost_model import AnalyticalCostModel, peaks_for
    from ..search.layer_graph import decoder_layer_graph, model_key
    from ..search.search import search

    config = model_config(args.model)
    layer = decoder_layer_graph(config, args.context_len)
    model = model_key(config)
    if args.analytical:
        device = "H100 (analytical)"
        cost = AnalyticalCostModel(132, peaks_for(device)[1])
        plans = search(layer, buckets, cost, model=model, device=device, max_nano=args.max_nano)
    else:
        plans = _measured(layer, buckets, model, args)
    _print(model, plans)
    if args.output:
        Path(args.output).write_text(json.dumps({str(b): p.to_json() for b, p in plans.items()}, indent=1))
    return 0


def _measured(layer, buckets, model, args):
    from ..search.cost_model import TableCostModel
    from ..search.errors import ProfilingUnavailableError
    from ..search.plan_runner import PlanTimer
    from ..search.profile_db import DeviceKey, ProfileDB, default_db_path
    from ..search.profiler import profile
    from ..search.search import search

    try:
        key = DeviceKey.current()
    except RuntimeError:
        raise ProfilingUnavailableError("profiling needs a CUDA GPU and none is available here; "
                                        "`nanoflow search --analytical` plans from the analytical cost model") from None
    path = Path(args.db) if args.db else default_db_path(key)
    db = ProfileDB.load(path, expect=key) if path.exists() else ProfileDB(key)
    profile(layer, buckets, db, max_nano=args.max_nano, time_budget=args.time_budget)
    db.save(path)
    plans = search(layer, buckets, TableCostModel(db), model=model, db=db, db_path=path, confirm=PlanTimer(layer),
                   device=key.name, max_nano=args.max_nano)
    print(f"profile database: {path}")
    return plans


def _print(model: str, plans) -> None:
    print(f"model {model}")
    for bucket, plan in plans.items():
        measured = f"{plan.measured_s * 1e3:.3f} ms measured" if plan.measured_s is not None else "not measured"
        seq = [c for c in plan.candidates if not c["sm_plan"]]
        base = f", sequential {seq[0]['predicted_s'] * 1e3:.3f} ms predicted" if seq else ""
        print(f"bucket {bucket}: nano-batches {plan.nano_batches}, SM shares {plan.sm_plan or 'whole device'}, "
              f"layer {plan.predicted_s * 1e3:.3f} ms predicted, {measured}{base} [{plan.cost_source}]")
        overlapped = [c for c in plan.candidates if c["sm_plan"]]
        if plan.sequential and overlapped:
            best = min(overlapped, key=lambda c: c["predicted_s"])
            print(f"  best overlapped plan: nano-batches {best['nano_batches']}, SM shares {best['sm_plan']}, "
                  f"{best['predicted_s'] * 1e3:.3f} ms predicted")
