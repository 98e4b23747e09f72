"""Drive both stages per token bucket, confirm the winner by a timed run, and keep the plan.

Stage two is cheap (tens of ms per candidate), so it runs on every stage-one candidate unless `top_n` says fewer:
stage one's ranking ignores SM shares and interference, and a ranking error there would otherwise be final. Each
winner's orders are then re-improved with the stage-two durations and re-solved once. The sequential plan (one
stream, the whole device, no nano-batches) is always a candidate: overlap must earn its place. With a `confirm`
callback (plan -> measured seconds per layer) the best few predicted plans and the sequential one are timed and the
fastest measured one is kept; only confirmed plans are stored in the profile database.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable

import networkx as nx

from .cost_model import CostModel, TableCostModel
from .errors import MissingProfileError
from .layer_graph import validate_layer_graph
from .profile_db import ProfileDB
from .stage_one import Candidate, improve_orders, stage_one
from .stage_two import stage_two, validate_sm_request

PLAN_VERSION = 1


@dataclass
class Plan:
    """A searched schedule for one model and token bucket; `to_options()` gives the compile options."""

    model: str
    bucket: int
    nano_batches: dict[str, int]  # per op class
    boundaries: dict[str, list[int]]  # per op class: token offsets of the nano-batches
    sm_plan: dict[str, int]  # per stream; empty = one stream on the whole device (sequential)
    order: dict[str, list[str]]  # per stream: nano-ops "op#i" in issue order
    predicted_s: float  # pipelined layer time the cost model predicts
    cost_source: str  # "profile" or "analytical"
    device: str
    measured_s: float | None = None
    candidates: list[dict] = field(default_factory=list)  # what else was predicted / measured
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    @property
    def sequential(self) -> bool:
        return not self.sm_plan

    def to_options(self) -> dict:
        """The compile options this plan stands for (nanoflow_compiler/options.py's CompileOptions fields): the
        sequential plan is `overlap=False`; otherwise counts, the exact nano-batch sizes for this bucket, and the
        SM shares. The per-stream order is the search's; the compiler's schedule pass orders streams itself."""
        if self.sequential:
            return {"overlap": False, "token_buckets": [self.bucket]}
        sizes = {c: [b - a for a, b in zip(p, p[1:])] for c, p in self.boundaries.items()}
        return {"nano_batches": dict(self.nano_batches), "split": {self.bucket: sizes},
                "sm_plan": dict(self.sm_plan), "token_buckets": [self.bucket]}

    def to_json(self) -> dict:
        """Everything, plus the compile options spelled out, so that a stored plan reads as what it sets."""
        return {**asdict(self), "options": self.to_options()}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        if data.get("version") != PLAN_VERSION:
            raise MissingProfileError(f"stored plan has version {data.get('version')!r}, expected {PLAN_VERSION}: "
                                      f"re-run `nanoflow search`")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def plan_key(model: str, bucket: int) -> str:
    return f"{model}@{bucket}"


def _summary(plan: Plan) -> dict:
    return {"nano_batches": plan.nano_batches, "sm_plan": plan.sm_plan, "predicted_s": plan.predicted_s,
            "measured_s": plan.measured_s}


def sequential_plan(layer: nx.DiGraph, bucket: int, cost: CostModel, model: str, device: str,
                    num_sms: int) -> Plan:
    """Every op whole, one after another, on the whole device: the baseline every overlapped plan must beat."""
    ops = list(nx.topological_sort(nx.DiGraph([(u, v) for u, v, s in layer.edges(data="shift", default=0) if s == 0])))
    ops += [n for n in layer if n not in ops]
    t = sum(cost.op_time(layer.nodes[n]["spec"], bucket, num_sms) for n in ops)
    classes = sorted({d["cls"] for _, d in layer.nodes(data=True)})
    return Plan(model, bucket, {c: 1 for c in classes}, {c: [0, bucket] for c in classes}, {},
                {"main": [f"{n}#0" for n in ops]}, t, cost.name, device)


def _check_coverage(layer: nx.DiGraph, bucket: int, cost: CostModel) -> None:
    """A bucket the profile does not cover is an error that names the bucket and what was profiled."""
    if not isinstance(cost, TableCostModel):
        return
    for _, d in layer.nodes(data=True):
        ts = cost.db.token_counts(d["spec"].kind)
        if not ts or not ts[0] <= bucket <= ts[-1]:
            have = f"was profiled for {ts[0]}..{ts[-1]} tokens" if ts else "was never profiled"
            raise MissingProfileError(f"no profile for bucket {bucket}: op kind {d['spec'].kind!r} {have}; "
                                      f"run `nanoflow search --buckets {bucket}` on this device")


def _overlapped(cand: Candidate, cost: CostModel, num_sms: int, model: str, device: str,
                time_limit: float | None) -> Plan:
    res = stage_two(cand.nano, cand.orders, cost, num_sms=num_sms, time_limit=time_limit)
    orders, _ = improve_orders(cand.nano, cand.orders, res.durations)
    if orders != cand.orders:
        again = stage_two(cand.nano, orders, cost, num_sms=num_sms, time_limit=time_limit)
        if again.period < res.period:
            res, cand = again, Candidate(cand.nano_batches, cand.nano, orders, cand.period)
    return Plan(model, cand.nano.graph["tokens"], dict(cand.nano_batches),
                {c: list(p) for c, p in cand.nano.graph["boundaries"].items()}, dict(res.shares),
                {s: list(o) for s, o in cand.orders.items()}, res.period, cost.name, device)


def search_bucket(layer: nx.DiGraph, bucket: int, cost: CostModel, *, model: str, device: str = "unknown",
                  num_sms: int | None = None, max_nano: int = 4, granularity: int = 16, top_n: int | None = None,
                  confirm: Callable[[Plan], float] | None = None, confirm_top: int = 4,
                  time_limit: float | None = None) -> Plan:
    """The best plan for one bucket: predicted by the two stages, then (with `confirm`) chosen by measurement."""
    validate_layer_graph(layer)
    num_sms = cost.num_sms if num_sms is None else num_sms
    validate_sm_request(num_sms, cost.granularity, cost.num_sms)
    _check_coverage(layer, bucket, cost)
    started = time.perf_counter()
    candidates = stage_one(layer, bucket, cost, max_nano=max_nano, granularity=granularity)
    plans = [sequential_plan(layer, bucket, cost, model, device, num_sms)]
    for cand in candidates[:top_n]:
        plans.append(_overlapped(cand, cost, num_sms, model, device, time_limit))
    plans.sort(key=lambda p: p.predicted_s)
    note = f"searched {len(plans)} plans in {time.perf_counter() - started:.2f}s with the {cost.name} cost model"
    if confirm is None:
        best = plans[0]
        best.notes += [note, "not confirmed by a timed run"]
    else:
        timed = plans[:confirm_top] + [p for p in plans[confirm_top:] if p.sequential]
        for p in timed:
            p.measured_s = float(confirm(p))
        best = min(timed, key=lambda p: p.measured_s)
        best.notes += [note, f"confirmed: measured {len(timed)} plans, kept the fastest"]
    best.candidates = [_summary(p) for p in plans if p is not best]
    return best


def search(layer: nx.DiGraph, buckets: list[int], cost: CostModel, *, model: str, db: ProfileDB | None = None,
           db_path=None, device: str | None = None, **kwargs) -> dict[int, Plan]:
    """Search every bucket; confirmed plans go into `db` (and are saved to `db_path` when given)."""
    device = device or (db.device.name if db else "unknown")
    plans = {}
    for bucket in buckets:
        plan = search_bucket(layer, bucket, cost, model=model, device=device, **kwargs)
        plans[bucket] = plan
        if db is not None and plan.measured_s is not None:
            db.plans[plan_key(model, bucket)] = plan.to_json()
    if db is not None and db_path is not None:
        db.save(db_path)
    return plans


def plan_buckets(db: ProfileDB, model: str) -> list[int]:
    """The token buckets the database holds a searched plan for, for this model."""
    return sorted(int(k.rsplit("@", 1)[1]) for k in db.plans if k.rsplit("@", 1)[0] == model)


def load_plan(db: ProfileDB, model: str, bucket: int) -> Plan:
    """The stored plan for model and bucket; the error names the buckets that do have one."""
    key = plan_key(model, bucket)
    if key not in db.plans:
        have = plan_buckets(db, model)
        raise MissingProfileError(f"no searched plan for model {model!r} at bucket {bucket} on {db.device.name}; "
                                  f"buckets with a plan: {have or 'none'}; run `nanoflow search --buckets {bucket}`")
    return Plan.from_json(db.plans[key])
