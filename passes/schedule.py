"""Pass 6: streams, issue order and waits of each bucket's nano-ops.

One stream per resource class with an SM share (COMPUTE, MEMORY, NETWORK; LIGHT ops share COMPUTE's stream, since
they are short and sit between GEMMs: a stream of their own would cost a cross-stream wait on each side). List
scheduling by upward rank on the analytical cost model orders each stream and gives one global issue order (a
topological order: ops start after their predecessors). Waits come from the reduced DAG: an op waits for an op of
another stream only when neither its own stream's order nor its other waits already imply it (vector clocks).

Collectives (NETWORK) get a stream of their own, so that nano-batch k's all-reduce and its wait hold only that
stream while COMPUTE runs nano-batch k+1's GEMMs. Its SM share is small (8 SMs, the partition granularity, unless
`sm_plan` says otherwise): NCCL launches its kernels on the process group's own stream, outside any green context,
so no partition can bound them. The NETWORK partition runs only waits (and, for collectives that cannot reduce in
place, small copies), so its SMs stay nearly idle and NCCL's few CTAs find free SMs there instead of queueing
behind persistent GEMMs that fill their own partition (NCCL_MAX_CTAS=8 caps NCCL at as many CTAs). Collectives
issue in program order on every rank (`collectives`).
"""

from __future__ import annotations

import networkx as nx
from torch import fx

from ..runtime import ir
from .collectives import check_order
from .context import BucketWork, PassContext
from .cost_model import op_seconds


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    for tokens, work in ctx.work.items():
        classes = {nano.op.cls for nano in work.ops if nano.op.kind == "compute"}
        plan = ctx.options.streams(classes, tokens)
        work.streams = [ir.StreamSpec(i, classes, sms) for i, (classes, sms) in enumerate(plan)]
        stream_of = {c: s.id for s in work.streams for c in s.classes}
        for nano in work.ops:
            nano.op.stream = stream_of[nano.op.cls] if nano.op.kind == "compute" else ir.HOST
        durations = _durations(work, ctx.options.device_sms)
        work.order, work.predicted_s = list_schedule(work.dag, durations, {n.op.id: n.op.stream for n in work.ops})
        check_order(work)
        assign_waits(work)
    return gm


def _durations(work: BucketWork, device_sms: int) -> dict[int, float]:
    sms = {s.id: s.sms for s in work.streams}
    return {n.op.id: 0.0 if n.op.stream is None else op_seconds(*n.cost, sms[n.op.stream], device_sms)
            for n in work.ops}


def list_schedule(dag: nx.DiGraph, durations: dict, stream: dict) -> tuple[list[int], float]:
    """Greedy over the device ops: repeatedly start the ready op that can start earliest (ties: longest path to the
    end first). Host ops (allocations, views, scalars) are issued just before the first device op that needs them,
    so that buffers live no longer than eager's temporaries. Returns the issue order and the predicted makespan."""
    host = {u for u in dag if stream[u] is None}
    preds: dict[int, set] = {}  # device predecessors, through chains of host ops
    for u in sorted(dag):
        preds[u] = set().union(*(preds[p] if p in host else {p} for p in dag.predecessors(u)))
    succs: dict[int, list] = {u: [] for u in dag if u not in host}
    for u in succs:
        for p in preds[u]:
            succs[p].append(u)
    rank: dict[int, float] = {}
    for u in sorted(succs, reverse=True):
        rank[u] = durations[u] + max((rank[v] for v in succs[u]), default=0.0)
    waiting = {u: len(preds[u]) for u in succs}
    ready = {u for u, d in waiting.items() if d == 0}
    finish: dict[int, float] = {}
    free: dict = {}
    order: list[int] = []
    issued: set[int] = set()
    while ready:
        def start(u: int) -> float:
            return max(max((finish[p] for p in preds[u]), default=0.0), free.get(stream[u], 0.0))

        u = min(ready, key=lambda v: (start(v), -rank[v], v))
        finish[u] = start(u) + durations[u]
        free[stream[u]] = finish[u]
        _issue_hosts(dag, u, host, issued, order)
        order.append(u)
        issued.add(u)
        ready.remove(u)
        for v in succs[u]:
            waiting[v] -= 1
            if waiting[v] == 0:
                ready.add(v)
    for u in sorted(host - issued):
        order.append(u)
    return order, max(finish.values(), default=0.0)


def _issue_hosts(dag: nx.DiGraph, u: int, host: set, issued: set, order: list) -> None:
    needed, stack = set(), [p for p in dag.predecessors(u) if p in host and p not in issued]
    while stack:
        p = stack.pop()
        if p not in needed:
            needed.add(p)
            stack += [q for q in dag.predecessors(p) if q in host and q not in issued]
    for p in sorted(needed):
        order.append(p)
        issued.add(p)


def assign_waits(work: BucketWork) -> None:
    """clock[op][s] = the last position on stream s known complete when op starts; wait only to advance it."""
    ops = {n.op.id: n.op for n in work.ops}
    position: dict[int, int] = {}
    last_on: dict[int, int] = {}
    clock: dict[int, dict] = {}
    for i in work.order:
        op = ops[i]
        if op.stream is None:
            continue
        prev = last_on.get(op.stream)
        known = dict(clock[prev]) if prev is not None else {}
        position[i] = known[op.stream] = position[prev] + 1 if prev is not None else 0
        needed: dict[int, int] = {}  # stream -> its latest predecessor there
        for p in work.reduced.predecessors(i):
            s = ops[p].stream
            if s != op.stream and (s not in needed or position[p] > position[needed[s]]):
                needed[s] = p
        for p in sorted(needed.values(), key=lambda p: -position[p]):
            s = ops[p].stream
            if known.get(s, -1) >= position[p]:
                continue
            op.waits.append(p)
            for stream, pos in clock[p].items():
                known[stream] = max(known.get(stream, -1), pos)
        op.waits.sort()
        clock[i] = known
        last_on[op.stream] = i
