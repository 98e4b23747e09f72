"""Stage one: nano-batch counts per op class and the op order per stream, from interference-free costs.

For every combination of nano-batch counts (1..max per class), expand the layer into its nano-op DAG, list-schedule
it (each stream takes the ready nano-op that can start first, the one with the longest remaining path winning ties),
then improve each stream's order by adjacent swaps while the pipelined layer time (timeline.period) drops. Costs are
each op alone on its stream's SMs (the whole device unless told otherwise), as NanoFlow's stage one does; stage two
then chooses the SM shares, with interference, for the best few candidates.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx

from .cost_model import CostModel
from .layer_graph import COMPUTE, LIGHT
from .nano_dag import expand
from .timeline import DeadlockError, period

# Light ops run in-line with the GEMMs they sit between, so they follow the compute class's nano-batch count.
DEFAULT_TIED = {LIGHT: COMPUTE}


@dataclass
class Candidate:
    nano_batches: dict[str, int]
    nano: nx.DiGraph
    orders: dict[str, list[str]]
    period: float  # interference-free pipelined layer time, seconds

    @property
    def total_nano_ops(self) -> int:
        return self.nano.number_of_nodes()


def op_durations(nano: nx.DiGraph, cost: CostModel, shares: dict[str, int]) -> dict[str, float]:
    return {n: cost.op_time(d["spec"], d["tokens"], shares[d["stream"]]) for n, d in nano.nodes(data=True)}


def list_schedule(nano: nx.DiGraph, durations: dict[str, float], priority: str = "critical_path"
                  ) -> dict[str, list[str]]:
    """Greedy non-delay schedule of one layer's in-layer DAG on one machine per stream.

    Among ops that can start first, `critical_path` prefers the longest remaining path; `token_order` prefers the
    earliest token range, the pipeline order NanoFlow writes by hand (ragged nano-batches can make the critical path
    rule start with a middle one, a local optimum that adjacent swaps cannot leave).
    """
    if priority not in ("critical_path", "token_order"):
        raise ValueError(f"unknown list-scheduling priority {priority!r}")
    inner = nx.DiGraph([(u, v) for u, v, s in nano.edges(data="shift", default=0) if s == 0])
    inner.add_nodes_from(nano)
    rank: dict[str, float] = {}
    for v in reversed(list(nx.topological_sort(inner))):
        rank[v] = durations[v] + max((rank[w] for w in inner.successors(v)), default=0.0)
    finish: dict[str, float] = {}
    free: dict[str, float] = {}
    orders: dict[str, list[str]] = {}
    waiting = {v: inner.in_degree(v) for v in inner}
    ready = {v for v, n in waiting.items() if n == 0}
    while ready:
        def start(v: str) -> float:
            stream = nano.nodes[v]["stream"]
            return max([free.get(stream, 0.0)] + [finish[u] for u in inner.predecessors(v)])

        def key(v: str) -> tuple:
            first, second = -rank[v], nano.nodes[v]["lo"]
            return (start(v), first, second, v) if priority == "critical_path" else (start(v), second, first, v)

        v = min(ready, key=key)
        stream = nano.nodes[v]["stream"]
        finish[v] = free[stream] = start(v) + durations[v]
        orders.setdefault(stream, []).append(v)
        ready.remove(v)
        for w in inner.successors(v):
            waiting[w] -= 1
            if waiting[w] == 0:
                ready.add(w)
    return orders


def improve_orders(nano: nx.DiGraph, orders: dict[str, list[str]], durations: dict[str, float],
                   max_passes: int = 8) -> tuple[dict[str, list[str]], float]:
    """Hill-climb on adjacent swaps within each stream; returns the best orders found and their period."""
    orders = {s: list(o) for s, o in orders.items()}
    best = period(nano, orders, durations)
    for _ in range(max_passes):
        improved = False
        for order in orders.values():
            for i in range(len(order) - 1):
                if nano.has_edge(order[i], order[i + 1]):
                    continue
                order[i], order[i + 1] = order[i + 1], order[i]
                try:
                    p = period(nano, orders, durations)
                except DeadlockError:
                    p = float("inf")
                if p < best * (1 - 1e-12):
                    best, improved = p, True
                else:
                    order[i], order[i + 1] = order[i + 1], order[i]
        if not improved:
            break
    return orders, best


def nano_batch_combinations(classes: list[str], max_nano: int, tied: dict[str, str]) -> list[dict[str, int]]:
    free = [c for c in classes if tied.get(c) not in classes]
    combos = []
    for counts in itertools.product(range(1, max_nano + 1), repeat=len(free)):
        combo = dict(zip(free, counts))
        combo.update({c: combo[tied[c]] for c in classes if c not in combo})
        combos.append(combo)
    return combos


def stage_one(layer: nx.DiGraph, tokens: int, cost: CostModel, max_nano: int = 4, granularity: int = 16,
              shares: dict[str, int] | None = None, tied: dict[str, str] | None = None) -> list[Candidate]:
    """All feasible nano-batch combinations with their best found order, best first (fewer nano-ops win ties)."""
    tied = DEFAULT_TIED if tied is None else tied
    classes = sorted({d["cls"] for _, d in layer.nodes(data=True)})
    streams = {d["stream"] for _, d in layer.nodes(data=True)}
    shares = shares or {s: cost.num_sms for s in streams}
    candidates = []
    for combo in nano_batch_combinations(classes, max_nano, tied):
        try:
            nano = expand(layer, tokens, combo, granularity)
        except ValueError:  # too few tokens for that many nano-batches
            continue
        durations = op_durations(nano, cost, shares)
        orders, p = min((improve_orders(nano, list_schedule(nano, durations, rule), durations)
                         for rule in ("token_order", "critical_path")), key=lambda r: r[1])
        candidates.append(Candidate(combo, nano, orders, p))
    if not candidates:
        raise ValueError(f"{tokens} tokens cannot be split into nano-batches of {granularity} tokens")
    best = min(c.period for c in candidates)
    candidates.sort(key=lambda c: (round(c.period / best, 9), c.total_nano_ops))
    return candidates
