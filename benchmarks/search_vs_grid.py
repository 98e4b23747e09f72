"""The searched plan against the best plan of an exhaustive grid, all timed in one run (issue 6's acceptance).

Llama-3-8B shapes (random weights: only shapes matter to the kernels), per token bucket: first `nanoflow search`'s
work, timed end to end (profiling, both stages, the confirming timed runs); then every grid plan is timed with the
same timer: nano-batch counts 1..4 for COMPUTE and MEMORY (light ops follow COMPUTE), SM shares in steps of 8 for
the two streams (pairs that leave fewer than 8 SMs idle; --all-pairs for every n + m <= SMs), and the sequential
plan. Each count's op order is stage one's. The searched plan and the grid's fastest are timed again side by side
at the end; it passes when the searched plan is within 3% of the grid's best and the search took under 10 minutes.

Time box: `--time-budget` seconds for the whole run. Profiling gets `--profile-share` of it (its coarsest level
whatever the budget), each bucket an equal part of the rest. The grid runs the sequential plan first, then in the
cost model's predicted order, and stops at its bucket's deadline: the JSON says how many grid plans were timed
(`grid_timed` of `grid_size`) and the predicted rank of the fastest, so a cut grid is never passed off as complete.
The JSON is rewritten after every stage and every 10 grid plans, so a killed run still leaves its results.

    python benchmarks/search_vs_grid.py --buckets 1024 2048 --time-budget 400   # on the H100, ~7 minutes
    python benchmarks/search_vs_grid.py --simulate --buckets 256                 # CPU smoke run: the cost model is the timer
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

from nanoflow_compiler.models import preset_config
from nanoflow_compiler.search.cost_model import AnalyticalCostModel, TableCostModel, peaks_for
from nanoflow_compiler.search.layer_graph import decoder_layer_graph, model_key
from nanoflow_compiler.search.search import Plan, search_bucket, sequential_plan
from nanoflow_compiler.search.stage_one import stage_one
from nanoflow_compiler.search.stage_two import durations_for
from nanoflow_compiler.search.timeline import period

RESULTS = Path(__file__).resolve().parent / "results"
SAVE_EVERY = 10  # grid plans between two writes of the JSON


def share_pairs(num_sms: int, step: int, all_pairs: bool) -> list[tuple[int, int]]:
    pairs = [(n, m) for n in range(step, num_sms, step) for m in range(step, num_sms - n + 1, step)]
    return pairs if all_pairs else [(n, m) for n, m in pairs if num_sms - n - m < step]


def grid_plans(layer, bucket: int, cost, model: str, device: str, max_nano: int, step: int,
               all_pairs: bool) -> list[Plan]:
    """Every (nano-batch counts, SM shares) plan of the grid, with its model prediction, plus the sequential one;
    the sequential plan first, then the predicted order (the order the grid is timed in)."""
    plans = []
    for cand in stage_one(layer, bucket, cost, max_nano=max_nano):
        for n, m in share_pairs(cost.num_sms, step, all_pairs):
            shares = {"COMPUTE": n, "MEMORY": m}
            predicted = period(cand.nano, cand.orders, durations_for(cand.nano, cost, shares))
            plans.append(Plan(model, bucket, dict(cand.nano_batches),
                              {c: list(p) for c, p in cand.nano.graph["boundaries"].items()}, shares,
                              {s: list(o) for s, o in cand.orders.items()}, predicted, cost.name, device))
    plans.sort(key=lambda p: p.predicted_s)
    return [sequential_plan(layer, bucket, cost, model, device, cost.num_sms), *plans]


def summary(plan: Plan, measured: float | None) -> dict:
    return {"nano_batches": plan.nano_batches, "sm_plan": plan.sm_plan, "predicted_s": plan.predicted_s,
            "measured_s": measured}


class Results:
    """The payload, written whole after every step (to a temporary file, then renamed: never half a JSON)."""

    def __init__(self, path: Path, payload: dict, started: float):
        self.path, self.payload, self.started = path, payload, started
        path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        self.payload["wall_s"] = time.perf_counter() - self.started
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.payload, indent=1, default=str))
        part.replace(self.path)


def time_grid(grid: list[Plan], timer, deadline: float, record: dict, results: Results) -> list[tuple]:
    """Time grid plans in order until the deadline (at least the sequential plan and one more); a plan that fails
    to run is recorded with its error and skipped. Returns (plan, seconds, rank) of the timed ones."""
    timed, started = [], time.monotonic()
    for rank, plan in enumerate(grid):
        if len(timed) >= 2 and time.monotonic() > deadline:
            break
        try:
            seconds = timer(plan)
        except Exception as e:  # noqa: BLE001 - one plan the device cannot run must not end the comparison
            record["grid_errors"].append({**summary(plan, None), "rank": rank, "error": f"{type(e).__name__}: {e}"})
            continue
        timed.append((plan, seconds, rank))
        record["grid"].append({**summary(plan, seconds), "rank": rank})
        if rank % SAVE_EVERY == SAVE_EVERY - 1:
            per_plan = (time.monotonic() - started) / (rank + 1)
            record["grid_timed"] = len(timed)
            print(f"  grid {rank + 1}/{len(grid)}: {per_plan:.2f} s per plan, about "
                  f"{per_plan * (len(grid) - rank - 1):.0f} s for the rest, {max(0.0, deadline - time.monotonic()):.0f}"
                  f" s left in this bucket's box; best so far {min(t for _, t, _ in timed) * 1e3:.3f} ms", flush=True)
            results.save()
    return timed


def run_bucket(bucket: int, layer, cost, model: str, device: str, timer, deadline: float, args,
               results: Results) -> None:
    record = results.payload["buckets"][str(bucket)] = {"grid": [], "grid_errors": []}
    t0 = time.perf_counter()
    searched = search_bucket(layer, bucket, cost, model=model, device=device, max_nano=args.max_nano, confirm=timer)
    record["search_s"] = time.perf_counter() - t0
    record["searched"] = {**summary(searched, searched.measured_s), "notes": searched.notes,
                          "options": searched.to_options()}
    results.payload["search_total_s"] += record["search_s"]
    results.payload["search_under_10_min"] = results.payload["search_total_s"] < 600
    print(f"bucket {bucket}: searched {searched.measured_s * 1e3:.3f} ms ({searched.nano_batches}, "
          f"{searched.sm_plan}) in {record['search_s']:.1f} s", flush=True)
    results.save()
    grid = grid_plans(layer, bucket, cost, model, device, args.max_nano, args.step, args.all_pairs)
    record["grid_size"] = len(grid)
    print(f"bucket {bucket}: timing {len(grid)} grid plans (sequential first, then the predicted order), "
          f"{max(0.0, deadline - time.monotonic()):.0f} s left in its box", flush=True)
    timed = time_grid(grid, timer, deadline, record, results)
    record["grid_timed"] = len(timed)
    record["grid_complete"] = len(timed) + len(record["grid_errors"]) == len(grid)
    best_plan, best, best_rank = min(timed, key=lambda g: g[1])
    again, best_again = timer(searched), timer(best_plan)  # side by side, after the grid: same clocks and heat
    record.update({
        "grid_best": {**summary(best_plan, best), "rank": best_rank, "remeasured_s": best_again},
        "searched_remeasured_s": again,
        "ratio_to_grid_best": again / best_again, "within_3pct": again <= 1.03 * best_again,
        "ratio_to_grid_best_first_measures": again / best,
        "sequential_s": next(t for p, t, _ in timed if p.sequential),
        "bucket_s": time.perf_counter() - t0,
    })
    results.save()
    cut = "" if record["grid_complete"] else f" (grid cut by the time box: {len(timed)} of {len(grid)} timed)"
    print(f"bucket {bucket}: searched {again * 1e3:.3f} ms vs grid best {best_again * 1e3:.3f} ms "
          f"({best_plan.nano_batches}, {best_plan.sm_plan}, predicted rank {best_rank}): {again / best_again:.3f}x"
          f"{cut}", flush=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--buckets", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--context-len", type=int, default=1024)
    ap.add_argument("--max-nano", type=int, default=4)
    ap.add_argument("--step", type=int, default=8, help="SM share step of the grid")
    ap.add_argument("--all-pairs", action="store_true", help="also grid points that leave SMs idle")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole run")
    ap.add_argument("--profile-share", type=float, default=0.35, help="part of the budget for profiling")
    ap.add_argument("--timer-layers", type=int, default=2,
                    help="a plan's time is (2L layers - L layers) / L from graph replays: L")
    ap.add_argument("--repeats", type=int, default=5, help="replays per timed graph (the median is kept)")
    ap.add_argument("--db", default=None, help="profile database to reuse (default: a fresh one, profiled here)")
    ap.add_argument("--simulate", action="store_true", help="no GPU: analytical model as the 'timer' (smoke test)")
    ap.add_argument("--output", default=None, help="JSON path (default benchmarks/results/search_vs_grid*.json)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if not 0 < args.profile_share < 1 or args.time_budget <= 0:
        raise SystemExit("search_vs_grid.py: --time-budget must be positive and --profile-share in (0, 1)")
    started, deadline = time.perf_counter(), time.monotonic() + args.time_budget
    config = preset_config("llama-3-8b")
    layer = decoder_layer_graph(config, args.context_len)
    model = model_key(config)
    name = "search_vs_grid" + ("_simulated" if args.simulate else "")
    out = Path(args.output) if args.output else RESULTS / f"{name}.json"
    results = Results(out, {
        "benchmark": "search_vs_grid", "model": "llama-3-8b", "model_key": model, "context_len": args.context_len,
        "arguments": vars(args), "timer": "simulated (cost model)" if args.simulate else
        f"CUDA-graph replay of the plan's nano-ops on its SM partitions (plan_runner.PlanTimer, "
        f"{args.timer_layers} and {2 * args.timer_layers} layers, median of {args.repeats})",
        "profile_s": 0.0, "search_total_s": 0.0, "search_under_10_min": True, "buckets": {}, "errors": {}}, started)
    if args.simulate:
        cost = AnalyticalCostModel(132, peaks_for("H100")[1])
        device, timer = "H100 (simulated)", (lambda p: p.predicted_s)
        results.payload["environment"] = {"device": "simulated", "python": platform.python_version()}
    else:
        print(f"profiling buckets {args.buckets} for at most {args.profile_share * args.time_budget:.0f} s "
              f"(its coarsest level whatever the budget)", flush=True)
        try:
            cost, device, env, timer, profile_s = _profiled(layer, args, args.profile_share * args.time_budget)
        except Exception:
            results.payload["errors"]["profile"] = traceback.format_exc()[-3000:]
            results.save()
            raise
        results.payload.update(environment=env, profile_s=profile_s, search_total_s=profile_s)
        print(f"profiled in {profile_s:.0f} s", flush=True)
    results.save()
    for i, bucket in enumerate(args.buckets):
        bucket_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(args.buckets) - i)
        try:
            run_bucket(bucket, layer, cost, model, device, timer, bucket_deadline, args, results)
        except Exception as e:  # noqa: BLE001 - recorded; the next bucket still runs
            results.payload["errors"][str(bucket)] = traceback.format_exc()[-3000:]
            print(f"bucket {bucket} failed: {type(e).__name__}: {e}", flush=True)
        results.save()
    print(f"wrote {out}")
    return results.payload


def _profiled(layer, args, budget: float):
    """Profile (timed) into a fresh or given database; returns the table cost model and the plan timer."""
    from gpu_timing import environment

    from nanoflow_compiler.search.plan_runner import PlanTimer
    from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB
    from nanoflow_compiler.search.profiler import profile

    key = DeviceKey.current()
    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "profile.json"
    db = ProfileDB.load(path, expect=key) if path.exists() else ProfileDB(key)
    t0 = time.perf_counter()
    profile(layer, args.buckets, db, max_nano=args.max_nano, time_budget=budget)
    profile_s = time.perf_counter() - t0
    db.save(path)
    timer = PlanTimer(layer, layers=args.timer_layers, repeats=args.repeats)
    return TableCostModel(db), key.name, environment(), timer, profile_s


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
