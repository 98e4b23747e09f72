"""Pass 7: groups of LIGHT nano-ops that the runtime fuses into one inductor kernel each.

LIGHT ops (norm pieces, rope, SiLU*mul, residual adds, casts) are short and memory-bound: run one by one per
nano-batch, each costs a launch and a round trip of its tensors through memory. A group is a set of LIGHT nano-ops
of one stream and one nano-batch segment that follow each other among that stream's ops of their segment. Ops of
other segments may sit in between, since the list scheduler interleaves segments (pow 0, pow 1, mean 0, mean 1, or
add 0, mm 1, add 1, pow 0), so this pass moves each group's ops next to each other in the issue order, at the place
of its first op, with the host ops they need (allocations, views, scalars) just before them, wherever the DAG
allows; then it recomputes the waits for the new order and ends a group before any op that must wait for another
stream (a fused kernel can only wait before it starts). An op joins a group only if it reads what earlier members
wrote exactly as they wrote it (same value, same narrowing), so that the fused graph passes those values in
registers, and writes nothing the group already reads or writes.

Groups are recorded as `Op.group` in the Schedule IR; `runtime/executors/fusion.py` compiles them. Option
`fuse_light`: None fuses on CUDA only (inductor's C++ kernels on CPU are slower to build than they save).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx

from ..runtime.executors.fusion import functional_target
from ..runtime.executors.program import resolve_target
from ..runtime.ir import LIGHT, Op, Ref, Seq
from .context import BucketWork, PassContext
from .schedule import assign_waits


@dataclass
class LightGroup:
    """A matched group: LIGHT op ids of one stream and segment, consecutive in the issue order."""

    stream: int
    seg: tuple | None
    members: list[int]


def run(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    if not enabled(ctx):
        return gm
    for work in ctx.work.values():
        ops = {n.op.id: n.op for n in work.ops}
        for gid, group in enumerate(find_groups(work, ctx.values.root)):
            for i in group.members:
                ops[i].group = gid
    return gm


def enabled(ctx: PassContext) -> bool:
    wanted = ctx.options.fuse_light
    return wanted if wanted is not None else torch.device(ctx.device or "cpu").type == "cuda"


def find_groups(work: BucketWork, roots: dict) -> list[LightGroup]:
    """The groups of one bucket; moves their members together in `work.order` and recomputes the waits."""
    ops = {n.op.id: n.op for n in work.ops}
    key_of, candidates = _runs(work, ops)
    order, grouped = _regroup(work, ops, key_of, candidates, roots)
    if order != work.order:
        work.order = order
        for op in ops.values():
            op.waits = []
        assign_waits(work)
    groups = []
    for members in grouped:
        current: list[int] = []
        for i in members + [None]:
            if i is None or (current and ops[i].waits):  # only a group's first op may wait
                if len(current) > 1:
                    groups.append(LightGroup(ops[current[0]].stream, ops[current[0]].seg, current))
                current = []
            if i is not None:
                current.append(i)
    return groups


def fusable(op: Op) -> bool:
    """A LIGHT ATen op on a stream whose functional form inductor can take (out= variants map back to it)."""
    if op.kind != "compute" or op.cls != LIGHT or op.stream is None or not op.target.startswith("aten."):
        return False
    return functional_target(resolve_target(op.target)) is not None


def _runs(work: BucketWork, ops: dict) -> tuple[dict, dict]:
    """Each fusable op's key (run, segment) and the ops of each key in issue order. A run of a segment on a stream
    ends at the next op of that stream that cannot be fused and covers any of the segment's tokens; ops of other
    segments in between do not end it (the list scheduler interleaves segments)."""
    key_of: dict[int, tuple] = {}
    candidates: dict[tuple, list] = defaultdict(list)
    current: dict[tuple, int] = {}  # (stream, segment) -> its open run
    for i in work.order:
        op = ops[i]
        if op.stream is None:
            continue
        if not fusable(op):
            for stream, seg in [k for k in current if k[0] == op.stream and _overlap(k[1], op.seg)]:
                del current[stream, seg]
            continue
        run = current.setdefault((op.stream, op.seg), len(candidates))
        key_of[i] = (run, op.seg)
        candidates[key_of[i]].append(i)
    return key_of, candidates


def _overlap(a: tuple | None, b: tuple | None) -> bool:
    return a is None or b is None or (a[0] < b[1] and b[0] < a[1])


def _regroup(work: BucketWork, ops: dict, key_of: dict, candidates: dict, roots: dict) -> tuple[list, list]:
    """The issue order with each group's members together, and the groups (lists of op ids) in that order."""
    position = {i: k for k, i in enumerate(work.order)}
    emitted: set[int] = set()
    order: list[int] = []
    groups: list[list[int]] = []
    for i in work.order:
        if i in emitted:
            continue
        if i not in key_of:
            order.append(i)
            emitted.add(i)
            continue
        members, hoisted, access = [i], [], _Access(roots)
        access.add(ops[i])
        later = candidates[key_of[i]]
        for c in later[later.index(i) + 1:]:
            if c in emitted:
                continue
            needed = _pending(work, c, emitted, set(members), set(hoisted))
            if needed is None or any(ops[a].kind == "compute" for a in needed) or not access.accepts(ops[c]):
                continue
            hoisted += sorted(needed, key=position.__getitem__)
            members.append(c)
            access.add(ops[c])
        order += hoisted + members
        emitted.update(hoisted + members)
        groups.append(members)
    return order, groups


def _pending(work: BucketWork, c: int, emitted: set, members: set, hoisted: set) -> set | None:
    """The ancestors of `c` not issued yet (None if one of them needs a member: it could not go first)."""
    needed: set[int] = set()
    stack = [p for p in work.dag.predecessors(c) if p not in emitted and p not in members and p not in hoisted]
    while stack:
        p = stack.pop()
        if p in needed:
            continue
        needed.add(p)
        for q in work.dag.predecessors(p):
            if q in members:
                return None
            if q not in emitted and q not in hoisted:
                stack.append(q)
    return needed


@dataclass
class _Access:
    """What a growing group reads and writes, to keep joiners to exact reads of earlier members' results."""

    roots: dict
    written: set = field(default_factory=set)  # Refs earlier members wrote
    written_roots: set = field(default_factory=set)
    read_roots: set = field(default_factory=set)

    def accepts(self, op: Op) -> bool:
        reads, writes = _reads_writes(op)
        for r in reads:
            if self._root(r) in self.written_roots and r not in self.written:
                return False
        return not any(self._root(w) in self.read_roots | self.written_roots for w in writes)

    def add(self, op: Op) -> None:
        reads, writes = _reads_writes(op)
        self.read_roots.update(self._root(r) for r in reads if r not in self.written)
        self.written.update(writes)
        self.written_roots.update(self._root(w) for w in writes)

    def _root(self, ref: Ref) -> str:
        return self.roots.get(ref.value, ref.value)


def _reads_writes(op: Op) -> tuple[list[Ref], list[Ref]]:
    _, outs = functional_target(resolve_target(op.target))
    reads = _refs([a for a in op.args] + [a for k, a in op.kwargs.items() if k not in outs])
    writes = [op.kwargs[k] for k in outs] + [r for r in op.copy_to if r is not None]
    return reads, writes + [Ref(n) for n in op.outputs if n is not None]


def _refs(args: list) -> list[Ref]:
    found: list[Ref] = []
    for a in args:
        if isinstance(a, Ref):
            found.append(a)
        elif isinstance(a, Seq):
            found += _refs(list(a.items))
    return found
