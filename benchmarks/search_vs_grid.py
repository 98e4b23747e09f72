"""The searched plan against the best plan of an exhaustive grid, all timed in one run (issue 6's acceptance).

Llama-3-8B shapes (random weights: only shapes matter to the kernels), per token bucket: first `nanoflow search`'s
work, timed end to end (profiling, both stages, the confirming timed runs); then every grid plan is timed with the
same timer: nano-batch counts 1..4 for COMPUTE and MEMORY (light ops follow COMPUTE), SM shares in steps of 8 for
the two streams (pairs that leave fewer than 8 SMs idle; --all-pairs for every n + m <= SMs), and the sequential
plan. Each count's op order is stage one's. The searched plan is timed again beside the grid. It passes when the
searched plan is within 3% of the grid's best and the search took under 10 minutes.

    python benchmarks/search_vs_grid.py --buckets 1024 2048        # on the H100
    python benchmarks/search_vs_grid.py --simulate --buckets 256    # CPU smoke run: "times" are model predictions
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from nanoflow_compiler.models import preset_config
from nanoflow_compiler.search.cost_model import AnalyticalCostModel, TableCostModel, peaks_for
from nanoflow_compiler.search.layer_graph import decoder_layer_graph, model_key
from nanoflow_compiler.search.search import Plan, search_bucket, sequential_plan
from nanoflow_compiler.search.stage_one import stage_one
from nanoflow_compiler.search.stage_two import durations_for
from nanoflow_compiler.search.timeline import period

RESULTS = Path(__file__).resolve().parent / "results"


def share_pairs(num_sms: int, step: int, all_pairs: bool) -> list[tuple[int, int]]:
    pairs = [(n, m) for n in range(step, num_sms, step) for m in range(step, num_sms - n + 1, step)]
    return pairs if all_pairs else [(n, m) for n, m in pairs if num_sms - n - m < step]


def grid_plans(layer, bucket: int, cost, model: str, device: str, max_nano: int, step: int,
               all_pairs: bool) -> list[Plan]:
    """Every (nano-batch counts, SM shares) plan of the grid, with its model prediction, plus the sequential one."""
    plans = [sequential_plan(layer, bucket, cost, model, device, cost.num_sms)]
    for cand in stage_one(layer, bucket, cost, max_nano=max_nano):
        for n, m in share_pairs(cost.num_sms, step, all_pairs):
            shares = {"COMPUTE": n, "MEMORY": m}
            predicted = period(cand.nano, cand.orders, durations_for(cand.nano, cost, shares))
            plans.append(Plan(model, bucket, dict(cand.nano_batches),
                              {c: list(p) for c, p in cand.nano.graph["boundaries"].items()}, shares,
                              {s: list(o) for s, o in cand.orders.items()}, predicted, cost.name, device))
    return plans


def summary(plan: Plan, measured: float) -> dict:
    return {"nano_batches": plan.nano_batches, "sm_plan": plan.sm_plan, "predicted_s": plan.predicted_s,
            "measured_s": measured}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buckets", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--context-len", type=int, default=1024)
    ap.add_argument("--max-nano", type=int, default=4)
    ap.add_argument("--step", type=int, default=8, help="SM share step of the grid")
    ap.add_argument("--all-pairs", action="store_true", help="also grid points that leave SMs idle")
    ap.add_argument("--time-budget", type=float, default=420.0, help="profiling budget, seconds")
    ap.add_argument("--db", default=None, help="profile database to reuse (default: a fresh one, profiled here)")
    ap.add_argument("--simulate", action="store_true", help="no GPU: analytical model as the 'timer' (smoke test)")
    ap.add_argument("--output", default=None, help="JSON path (default benchmarks/results/search_vs_grid*.json)")
    args = ap.parse_args(argv)

    config = preset_config("llama-3-8b")
    layer = decoder_layer_graph(config, args.context_len)
    model = model_key(config)
    started = time.perf_counter()
    if args.simulate:
        cost = AnalyticalCostModel(132, peaks_for("H100")[1])
        device, env, timer = "H100 (simulated)", {"device": "simulated", "python": platform.python_version()}, None
        profile_s = 0.0
    else:
        cost, device, env, timer, profile_s = _profiled(layer, args)
    confirm = timer or (lambda p: p.predicted_s)
    results = {}
    search_total = profile_s
    for bucket in args.buckets:
        t0 = time.perf_counter()
        searched = search_bucket(layer, bucket, cost, model=model, device=device, max_nano=args.max_nano,
                                 confirm=confirm)
        search_s = time.perf_counter() - t0
        search_total += search_s
        grid = [(p, confirm(p)) for p in grid_plans(layer, bucket, cost, model, device, args.max_nano, args.step,
                                                     args.all_pairs)]
        again = confirm(searched)
        best_plan, best = min(grid, key=lambda g: g[1])
        results[str(bucket)] = {
            "search_s": search_s, "searched": {**summary(searched, searched.measured_s), "remeasured_s": again,
                                               "notes": searched.notes},
            "grid_best": summary(best_plan, best), "grid_size": len(grid),
            "ratio_to_grid_best": again / best, "within_3pct": again <= 1.03 * best,
            "sequential_s": next(t for p, t in grid if p.sequential),
            "grid": [summary(p, t) for p, t in grid],
        }
        print(f"bucket {bucket}: searched {again * 1e3:.3f} ms ({searched.nano_batches}, {searched.sm_plan}) vs grid "
              f"best {best * 1e3:.3f} ms ({best_plan.nano_batches}, {best_plan.sm_plan}): {again / best:.3f}x; "
              f"search {search_s:.1f} s", flush=True)
    payload = {"benchmark": "search_vs_grid", "environment": env, "model": "llama-3-8b", "model_key": model,
               "context_len": args.context_len, "timer": "simulated (cost model)" if args.simulate else
               "CUDA-graph replay of the plan's nano-ops on its SM partitions (plan_runner.PlanTimer)",
               "profile_s": profile_s, "search_total_s": search_total, "search_under_10_min": search_total < 600,
               "wall_s": time.perf_counter() - started, "buckets": results}
    name = "search_vs_grid" + ("_simulated" if args.simulate else "")
    out = Path(args.output) if args.output else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out}")
    return payload


def _profiled(layer, args):
    """Profile (timed) into a fresh or given database; returns the table cost model and the plan timer."""
    from gpu_timing import environment

    from nanoflow_compiler.search.plan_runner import PlanTimer
    from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB
    from nanoflow_compiler.search.profiler import profile

    key = DeviceKey.current()
    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "profile.json"
    db = ProfileDB.load(path, expect=key) if path.exists() else ProfileDB(key)
    t0 = time.perf_counter()
    profile(layer, args.buckets, db, max_nano=args.max_nano, time_budget=args.time_budget)
    profile_s = time.perf_counter() - t0
    db.save(path)
    return TableCostModel(db), key.name, environment(), PlanTimer(layer), profile_s


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
