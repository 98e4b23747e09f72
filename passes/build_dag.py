"""Pass 5: the DAG of nano-ops of each bucket, with data, mutation and object edges and cost attributes.

Edges come from what each op reads and writes (root value, token range): a reader depends on every earlier writer
of an overlapping range (data), a writer on every earlier reader and writer of an overlapping range (mutation,
so that KV appends stay ordered with the attention that reads the cache), and every op on the op that created the
objects it names (object: allocations, views). Collectives are chained in `collectives.order_key` order (order),
so that every rank issues them in the same order. The transitive reduction of the device ops' DAG is the minimal set
of dependencies that the schedule turns into cross-stream waits.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
from torch import fx

from .context import BucketWork, PassContext


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    for work in ctx.work.values():
        work.dag = build(work)
        device = [n for n, kind in work.dag.nodes(data="kind") if kind == "compute"]
        work.reduced = transitive_reduction(work.dag.subgraph(device))
    return gm


def build(work: BucketWork) -> nx.DiGraph:
    dag = nx.DiGraph(tokens=work.tokens, cuts=list(work.cuts))
    producer: dict[str, int] = {}
    writers: dict[str, list] = defaultdict(list)
    readers: dict[str, list] = defaultdict(list)
    for nano in work.ops:
        op = nano.op
        i = op.id
        dag.add_node(i, node=op.node, kind=op.kind, cls=op.cls, seg=op.seg, flops=nano.cost[0], bytes=nano.cost[1])
        for name in nano.uses:
            if producer.get(name, i) != i:
                dag.add_edge(producer[name], i, kind="object")
        for root, rng in nano.reads:
            for w, wrng in writers[root]:
                if _overlap(rng, wrng):
                    _edge(dag, w, i, "data")
        for root, rng in nano.writes:
            for j, jrng in writers[root] + readers[root]:
                if j != i and _overlap(rng, jrng):
                    _edge(dag, j, i, "mutation")
        for root, rng in nano.reads:
            readers[root].append((i, rng))
        for root, rng in nano.writes:
            writers[root].append((i, rng))
        for name in op.outputs:
            if name is not None:
                producer[name] = i
    chain = sorted((nano.order, nano.op.id) for nano in work.ops if nano.order is not None)
    for (_, u), (_, v) in zip(chain, chain[1:]):
        _edge(dag, u, v, "order")
    return dag


def _overlap(a: tuple | None, b: tuple | None) -> bool:
    return a is None or b is None or (a[0] < b[1] and b[0] < a[1])


def _edge(dag: nx.DiGraph, u: int, v: int, kind: str) -> None:
    if dag.has_edge(u, v):
        if dag.edges[u, v]["kind"] == "object":
            dag.edges[u, v]["kind"] = kind
    else:
        dag.add_edge(u, v, kind=kind)


def transitive_reduction(dag: nx.DiGraph) -> nx.DiGraph:
    """Drop every edge implied by a longer path. Visiting each node's children in topological order, a child
    already reachable from an earlier one is implied; reach sets are int bitsets over topological positions."""
    position = {u: i for i, u in enumerate(nx.topological_sort(dag))}
    reduced = nx.DiGraph(**dag.graph)
    reduced.add_nodes_from(dag.nodes(data=True))
    reach: dict = {}
    for u in sorted(dag, key=position.__getitem__, reverse=True):
        covered = 0
        for v in sorted(dag.successors(u), key=position.__getitem__):
            if not (covered >> position[v]) & 1:
                reduced.add_edge(u, v, **dag.edges[u, v])
                covered |= reach[v] | (1 << position[v])
        reach[u] = covered
    return reduced
