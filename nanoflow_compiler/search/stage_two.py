"""Stage two: SM shares per stream by a MILP (scipy's HiGHS) that minimises the pipelined layer time.

For the per-stream orders of stage one, each stream c picks one share from the allowed set (one-hot binaries a[c,x]),
with sum of shares <= SMs. Start times s_j are continuous; every data, stream-order and wrap-around edge u->v with
layer shift k gives s_u + D_u <= s_v + k*P, so the minimal P is exactly the steady-state period of the cyclic schedule
for that order (see timeline.py), not a bound.

Interference: op j on stream c with share x, beside stream c' with share y, takes solo_j(x) * F_j(x, c', y), where
F is the profiled pairwise slowdown of j's kind against the kinds of c' (weighted by their time on c'). With several
other streams the excess factors add: D_j = solo_j(x) * (1 + sum_c' (F_j(x, c', y_c') - 1)). Additive is the first-
order expansion of independent slowdowns, exact for two streams, and it keeps D_j linear in pair variables
z[c,c',x,y] = a[c,x] * a[c',y], linearised exactly by sum_y z = a[c,x] and sum_x z = a[c',y] (with one-hot a these
force z to the product). The factor applies to the whole op, as if it always co-runs: true in the steady state the
search aims at, pessimistic during pipeline fill; the confirmation run measures the real thing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .cost_model import CostModel
from .errors import InfeasibleRequestError
from .timeline import cyclic_edges, period

_SCALE = 1e6  # the MILP works in microseconds: HiGHS tolerances are absolute, op times are ~1e-5 s


@dataclass
class StageTwoResult:
    shares: dict[str, int]
    period: float  # seconds, re-evaluated exactly from the chosen shares
    durations: dict[str, float]
    milp_objective: float  # seconds, what HiGHS reported


def allowed_shares(num_sms: int, granularity: int, device_sms: int | None = None) -> list[int]:
    """Shares granularity, 2*granularity, ... <= num_sms; checks the request against the device first."""
    validate_sm_request(num_sms, granularity, device_sms)
    return list(range(granularity, num_sms + 1, granularity))


def validate_sm_request(num_sms: int, granularity: int, device_sms: int | None = None,
                        shares: dict[str, int] | None = None) -> None:
    """Clear errors for budgets and pinned shares that no partition of the device can give."""
    if granularity < 1 or num_sms < granularity:
        raise InfeasibleRequestError(f"an SM budget of {num_sms} cannot hold one partition of {granularity} SMs")
    if device_sms is not None and num_sms > device_sms:
        raise InfeasibleRequestError(f"asked for {num_sms} SMs but the device has {device_sms}")
    for stream, n in (shares or {}).items():
        _check_share(f"stream {stream!r}", n, granularity, num_sms)
    if shares and sum(shares.values()) > num_sms:
        raise InfeasibleRequestError(f"pinned shares {shares} sum to {sum(shares.values())} SMs, more than the "
                                     f"{num_sms} available")


def _check_share(what: str, n: int, granularity: int, num_sms: int) -> None:
    if n < granularity or n % granularity:
        raise InfeasibleRequestError(f"{what}: {n} SMs is not a positive multiple of the partition granularity "
                                     f"{granularity}")
    if n > num_sms:
        raise InfeasibleRequestError(f"{what}: {n} SMs is more than the {num_sms} available")


class Interference:
    """F_j(x, c', y) for one nano-op DAG, memoised: the MILP asks for it per op kind and share pair."""

    def __init__(self, nano: nx.DiGraph, cost: CostModel):
        self.nano, self.cost = nano, cost
        self._kinds: dict[tuple[str, int], list] = {}
        self._factors: dict[tuple, float] = {}

    def _stream_kinds(self, stream: str, sms: int) -> list:
        """(spec, weight) of the kinds running on a stream, weighted by their solo time there."""
        if (stream, sms) not in self._kinds:
            totals: dict = {}
            for _, d in self.nano.nodes(data=True):
                if d["stream"] == stream:
                    totals[d["spec"]] = totals.get(d["spec"], 0.0) + self.cost.op_time(d["spec"], d["tokens"], sms)
            whole = sum(totals.values())
            self._kinds[(stream, sms)] = [(spec, t / whole) for spec, t in totals.items()]
        return self._kinds[(stream, sms)]

    def factor(self, spec, x: int, other: str, y: int) -> float:
        """Slowdown of an op of `spec` on x SMs while stream `other` runs on y SMs."""
        key = (spec, x, other, y)
        if key not in self._factors:
            self._factors[key] = sum(w * self.cost.slowdown(spec, x, spec_b, y)
                                     for spec_b, w in self._stream_kinds(other, y))
        return self._factors[key]


def durations_for(nano: nx.DiGraph, cost: CostModel, shares: dict[str, int],
                  interference: Interference | None = None) -> dict[str, float]:
    """The interference model above, evaluated directly: what the MILP encodes linearly."""
    inter = interference or Interference(nano, cost)
    streams = {d["stream"] for _, d in nano.nodes(data=True)}
    out = {}
    for name, d in nano.nodes(data=True):
        c, x = d["stream"], shares[d["stream"]]
        extra = sum(inter.factor(d["spec"], x, o, shares[o]) - 1.0 for o in streams if o != c)
        out[name] = cost.op_time(d["spec"], d["tokens"], x) * (1.0 + extra)
    return out


def stage_two(nano: nx.DiGraph, orders: dict[str, list[str]], cost: CostModel, num_sms: int | None = None,
              allowed: list[int] | None = None, fixed: dict[str, int] | None = None,
              time_limit: float | None = None) -> StageTwoResult:
    """Optimal SM shares for these orders; `fixed` pins some streams' shares."""
    num_sms = cost.num_sms if num_sms is None else num_sms
    validate_sm_request(num_sms, cost.granularity, cost.num_sms, fixed)
    allowed = allowed or allowed_shares(num_sms, cost.granularity)
    for x in allowed:
        _check_share("allowed share", x, cost.granularity, num_sms)
    streams = sorted(orders)
    unknown = set(fixed or ()) - set(streams)
    if unknown:
        raise InfeasibleRequestError(f"pinned shares name streams {sorted(unknown)} that the plan does not have "
                                     f"(streams: {streams})")
    if len(streams) * min(allowed) > num_sms:
        raise InfeasibleRequestError(f"{len(streams)} streams need at least {len(streams) * min(allowed)} SMs, "
                                     f"only {num_sms} are available")
    choices = {c: [fixed[c]] if fixed and c in fixed else list(allowed) for c in streams}
    names = list(nano)
    inter = Interference(nano, cost)

    # Variable layout: a[c,x] | z[c,c',x,y] | D_j | s_j | P
    col: dict = {}
    for c in streams:
        for x in choices[c]:
            col[("a", c, x)] = len(col)
    pairs = list(itertools.combinations(streams, 2))
    for c, o in pairs:
        for x, y in itertools.product(choices[c], choices[o]):
            col[("z", c, o, x, y)] = len(col)
    for j in names:
        col[("D", j)] = len(col)
    for j in names:
        col[("s", j)] = len(col)
    col["P"] = len(col)
    n = len(col)

    rows, lo, hi = [], [], []

    def add(coeffs: dict, lb: float, ub: float) -> None:
        row = np.zeros(n)
        for k, v in coeffs.items():
            row[col[k]] += v
        rows.append(row)
        lo.append(lb)
        hi.append(ub)

    for c in streams:
        add({("a", c, x): 1.0 for x in choices[c]}, 1.0, 1.0)
    add({("a", c, x): float(x) for c in streams for x in choices[c]}, -np.inf, float(num_sms))
    for c, o in pairs:
        for x in choices[c]:
            add({**{("z", c, o, x, y): 1.0 for y in choices[o]}, ("a", c, x): -1.0}, 0.0, 0.0)
        for y in choices[o]:
            add({**{("z", c, o, x, y): 1.0 for x in choices[c]}, ("a", o, y): -1.0}, 0.0, 0.0)
    for j in names:
        d = nano.nodes[j]
        c, spec = d["stream"], d["spec"]
        solo = {x: cost.op_time(spec, d["tokens"], x) * _SCALE for x in choices[c]}
        coeffs = {("D", j): 1.0}
        coeffs.update({("a", c, x): -solo[x] for x in choices[c]})
        for o in streams:
            if o == c:
                continue
            for x, y in itertools.product(choices[c], choices[o]):
                key = ("z", c, o, x, y) if c < o else ("z", o, c, y, x)
                coeffs[key] = coeffs.get(key, 0.0) - solo[x] * (inter.factor(spec, x, o, y) - 1.0)
        add(coeffs, 0.0, 0.0)
    for u, v, shift in cyclic_edges(nano, orders):
        coeffs = {("s", u): 1.0, ("D", u): 1.0}
        coeffs[("s", v)] = coeffs.get(("s", v), 0.0) - 1.0
        if shift:
            coeffs["P"] = -float(shift)
        add(coeffs, -np.inf, 0.0)

    integrality = np.zeros(n)
    integrality[[i for k, i in col.items() if k[0] == "a"]] = 1
    upper = np.full(n, np.inf)
    upper[[i for k, i in col.items() if k[0] in ("a", "z")]] = 1.0
    objective = np.zeros(n)
    objective[col["P"]] = 1.0
    options = {"mip_rel_gap": 1e-9, **({"time_limit": time_limit} if time_limit else {})}
    res = milp(objective, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(n), upper), options=options)
    if res.x is None:
        raise InfeasibleRequestError(f"no SM shares satisfy the request ({res.message})")
    shares = {c: max(choices[c], key=lambda x: res.x[col[("a", c, x)]]) for c in streams}
    durations = durations_for(nano, cost, shares, inter)
    return StageTwoResult(shares, period(nano, orders, durations), durations, float(res.fun) / _SCALE)
