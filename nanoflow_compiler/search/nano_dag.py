"""Expand a layer graph of op kinds into the nano-op DAG of one layer for given nano-batch counts per op class.

A nano-op `qkv#1` runs op `qkv` on the token range of its nano-batch. Different op classes may use different
nano-batch counts (NanoFlow gives GEMMs fewer, larger nano-batches than attention), so a nano-op depends on every
nano-op of its producer whose token range overlaps its own; edges keep the layer graph's `shift`.
"""

from __future__ import annotations

import networkx as nx

from .layer_graph import validate_layer_graph


def split_points(tokens: int, count: int, granularity: int = 16) -> list[int]:
    """Boundaries of `count` near-equal nano-batches, multiples of `granularity` tokens (the last may be ragged)."""
    if count < 1:
        raise ValueError(f"nano-batch count must be at least 1, got {count}")
    points = [0] + [round(tokens * i / count / granularity) * granularity for i in range(1, count)] + [tokens]
    if any(b <= a for a, b in zip(points, points[1:])):
        raise ValueError(f"{tokens} tokens cannot be split into {count} nano-batches of at least {granularity} tokens")
    return points


def nano_name(op: str, index: int) -> str:
    return f"{op}#{index}"


def expand(layer: nx.DiGraph, tokens: int, nano_batches: dict[str, int], granularity: int = 16,
           boundaries: dict[str, list[int]] | None = None) -> nx.DiGraph:
    """The nano-op DAG (plus shift-1 edges into the next layer); classes missing from `nano_batches` stay whole.

    `boundaries` (per class, as a stored plan has them) replaces the even split."""
    validate_layer_graph(layer)
    points = {cls: list(boundaries[cls]) if boundaries and cls in boundaries
              else split_points(tokens, nano_batches.get(cls, 1), granularity)
              for cls in {d["cls"] for _, d in layer.nodes(data=True)}}
    nano = nx.DiGraph(tokens=tokens, nano_batches=dict(nano_batches), boundaries=points)
    ranges: dict[str, list[tuple[str, int, int]]] = {}
    for op, data in layer.nodes(data=True):
        bounds = points[data["cls"]]
        ranges[op] = []
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            name = nano_name(op, i)
            nano.add_node(name, op=op, index=i, lo=lo, hi=hi, tokens=hi - lo,
                          spec=data["spec"], cls=data["cls"], stream=data["stream"])
            ranges[op].append((name, lo, hi))
    for u, v, shift in layer.edges(data="shift", default=0):
        for a, alo, ahi in ranges[u]:
            for b, blo, bhi in ranges[v]:
                if alo < bhi and blo < ahi:
                    nano.add_edge(a, b, shift=shift)
    return nano
