"""The pipelined layer time of a nano-op DAG for fixed per-stream orders and fixed durations.

Layers repeat, so the steady state is a cyclic schedule: each stream runs its ops in order, layer after layer, and
data edges with shift 1 link layer l to layer l+1. Run as soon as possible, it settles to a period equal to the
maximum cycle ratio (sum of durations / number of layer shifts over a cycle) of the graph of data edges, stream-order
edges and each stream's wrap-around edge from its last op of layer l to its first op of layer l+1. We compute that
ratio exactly with Karp's maximum mean cycle algorithm on the layer-to-layer max-plus matrix.
"""

from __future__ import annotations

import networkx as nx
import numpy as np


class DeadlockError(ValueError):
    """Stream orders that contradict the data edges: the schedule would wait forever."""


def cyclic_edges(nano: nx.DiGraph, orders: dict[str, list[str]]) -> list[tuple[str, str, int]]:
    """Data edges plus stream-order edges (shift 0) and each stream's wrap-around edge (shift 1)."""
    edges = [(u, v, s) for u, v, s in nano.edges(data="shift", default=0)]
    seen = set()
    for stream, order in orders.items():
        for name in order:
            if nano.nodes[name]["stream"] != stream:
                raise ValueError(f"nano-op {name!r} runs on stream {nano.nodes[name]['stream']!r}, not {stream!r}")
        seen.update(order)
        edges += [(u, v, 0) for u, v in zip(order, order[1:])]
        if order:
            edges.append((order[-1], order[0], 1))
    missing = set(nano) - seen
    if missing or len(seen) != sum(map(len, orders.values())):
        raise ValueError(f"stream orders must list every nano-op exactly once; missing: {sorted(missing)}")
    return edges


def layer_matrix(nano: nx.DiGraph, orders: dict[str, list[str]], durations: dict[str, float]):
    """(names, A) with A[u, v] the least start-to-start delay from u in layer l to v in layer l+1 (-inf: none)."""
    edges = cyclic_edges(nano, orders)
    inner = nx.DiGraph()
    inner.add_nodes_from(nano)
    inner.add_edges_from((u, v) for u, v, s in edges if s == 0)
    try:
        topo = list(nx.topological_sort(inner))
    except nx.NetworkXUnfeasible:
        raise DeadlockError(f"stream orders deadlock against the data edges: {nx.find_cycle(inner)}") from None
    jumps: dict[str, list[str]] = {}
    for u, v, s in edges:
        if s == 1:
            jumps.setdefault(u, []).append(v)
    sources = sorted(jumps)
    index = {u: i for i, u in enumerate(sources)}
    A = np.full((len(sources), len(sources)), -np.inf)
    for u in sources:
        # Longest start-to-start paths inside layer l+1 from every op that u's shift-1 edges reach.
        dist = {v: -np.inf for v in topo}
        for w in jumps[u]:
            dist[w] = max(dist[w], durations[u])
        for x in topo:
            if dist[x] > -np.inf:
                for y in inner.successors(x):
                    dist[y] = max(dist[y], dist[x] + durations[x])
        for v in sources:
            A[index[u], index[v]] = dist[v]
    return sources, A


def max_cycle_mean(A: np.ndarray) -> float:
    """Karp's algorithm: the largest mean weight of a cycle of the graph with weight A[u, v] on edge u->v."""
    n = A.shape[0]
    D = np.full((n + 1, n), -np.inf)
    D[0] = 0.0
    for k in range(1, n + 1):
        D[k] = np.max(D[k - 1][:, None] + A, axis=0)
    best = -np.inf
    for v in range(n):
        if D[n, v] == -np.inf:
            continue
        finite = D[:n, v] > -np.inf
        ks = np.arange(n)[finite]
        best = max(best, float(np.min((D[n, v] - D[ks, v]) / (n - ks))))
    return best


def period(nano: nx.DiGraph, orders: dict[str, list[str]], durations: dict[str, float]) -> float:
    """Steady-state time per layer (seconds) of the cyclic schedule with these orders and durations."""
    _, A = layer_matrix(nano, orders, durations)
    return max_cycle_mean(A)
