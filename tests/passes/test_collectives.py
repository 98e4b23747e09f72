"""Functional collectives per nano-batch (passes/collectives.py), on tiny graphs over a one-rank gloo group in this
process: the all-reduce splits in place or out of place, one per nano-batch, each with its wait, on a NETWORK stream;
a gather along the token dim runs unsplit with a warning; collectives issue in program order. The two-rank model
run is in tests/models/test_parallel.py."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from test_schedule import happens_before

from nanoflow_compiler.passes.collectives import check_order
from nanoflow_compiler.passes.context import NanoflowWarning

AR_INPLACE, AR, WAIT = ("_c10d_functional.all_reduce_.default", "_c10d_functional.all_reduce.default",
                        "_c10d_functional.wait_tensor.default")
GATHER = "_c10d_functional.all_gather_into_tensor.default"
_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


@pytest.fixture(scope="module")
def group():
    """A process group of one rank: collectives are real (and the identity), so results can be checked here."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD.group_name
    dist.destroy_process_group()


@pytest.fixture
def x_w():
    return torch.randn(8, 16), torch.randn(16, 16)


def compiled(trace, fn, args, k=3):
    _, ctx = trace(fn, *args, params=("w",), options={"nano_batches": k})
    torch.testing.assert_close(ctx.module(*args), fn(*args), rtol=1e-5, atol=1e-5)
    return ctx


def network_ops(ctx):
    """(target, token span, stream classes) of the NETWORK ops, in issue order."""
    bucket = ctx.ir.buckets[0]
    classes = {s.id: s.classes for s in bucket.streams}
    return [(op.target, None if op.seg is None else (bucket.cuts[op.seg[0]], bucket.cuts[op.seg[1]]),
             classes[op.stream]) for op in bucket.ops if op.cls == "NETWORK" and op.kind == "compute"]


def test_row_parallel_all_reduce_splits_in_place_one_pair_per_nano_batch(trace, group, x_w):
    def fn(x, w):  # a row-parallel linear: the GEMM's output is read only by the all-reduce
        return funcol.all_reduce(x @ w, "sum", group) + 1

    ctx = compiled(trace, fn, x_w)
    spans = [(0, 3), (3, 5), (5, 8)]
    assert network_ops(ctx) == [(t, s, ["NETWORK"]) for s in spans for t in (AR_INPLACE, WAIT)]
    reduced = [op for op in ctx.ir.buckets[0].ops if op.target == AR_INPLACE]
    assert all(op.args[0].value == "mm" and op.args[0].dim == 0 and op.outputs == [] for op in reduced)
    assert not any(op.kind == "alloc" and op.outputs == ["wait_tensor"] for op in ctx.ir.buckets[0].ops)


def test_all_reduce_of_a_value_read_elsewhere_runs_out_of_place(trace, group, x_w):
    def fn(x, w):
        y = x @ w
        return funcol.all_reduce(y, "sum", group) + y  # y must survive the reduction

    ctx = compiled(trace, fn, x_w, k=2)
    ops = ctx.ir.buckets[0].ops
    assert [t for t, _, _ in network_ops(ctx)] == [AR, WAIT, AR, WAIT]
    waits = [op for op in ops if op.target == WAIT]
    assert [w.args[0].value for w in waits] == ["all_reduce@0", "all_reduce@1"]
    assert all(w.copy_to[0].value == "wait_tensor" and w.copy_to[0].dim == 0 for w in waits)


def test_all_gather_splits_when_the_token_dim_follows_a_unit_dim(trace, group, x_w):
    def fn(x, w):
        return _gather((x @ w).unsqueeze(0), 0, group)[0] * 2

    ctx = compiled(trace, fn, x_w, k=2)
    assert [(t, s) for t, s, _ in network_ops(ctx)] == [(GATHER, (0, 4)), (WAIT, (0, 4)), (GATHER, (4, 8)),
                                                        (WAIT, (4, 8))]


def test_all_gather_along_the_token_dim_runs_unsplit_with_a_warning(trace, group, x_w):
    def fn(x, w):
        return _gather(x @ w, 0, group).sum(0)

    with pytest.warns(NanoflowWarning, match=r"all_gather_into_tensor.default gathers or scatters along dim 0, the "
                                             r"token dim.*\(all_gather_into_tensor\)"):
        ctx = compiled(trace, fn, x_w)
    assert network_ops(ctx) == [(GATHER, None, ["NETWORK"]), (WAIT, None, ["NETWORK"])]
    assert any("all_gather_into_tensor" in note for note in ctx.ir.provenance.notes)


def test_nano_all_reduce_overlaps_the_next_nano_gemm_and_issues_in_program_order(trace, group, x_w):
    def fn(x, w):  # two row-parallel layers
        h = funcol.all_reduce(x @ w, "sum", group) + x
        return funcol.all_reduce(h @ w, "sum", group) + h

    ctx = compiled(trace, fn, x_w, k=2)
    work = ctx.work[8]
    ops = {n.op.id: n.op for n in work.ops}
    hb = happens_before(work)
    first = {(ops[i].node, ops[i].seg): i for i in work.order if ops[i].kind == "compute"}
    # nothing orders nano-batch 0's all-reduce before nano-batch 1's GEMM: they may run at once
    assert not nx.has_path(hb, first[("all_reduce", (0, 1))], first[("mm", (1, 2))])
    issued = [(ops[i].node, ops[i].seg) for i in work.order if ops[i].cls == "NETWORK"]
    assert issued == [(n, s) for c, w in (("all_reduce", "wait_tensor"), ("all_reduce_1", "wait_tensor_1"))
                      for s in ((0, 1), (1, 2)) for n in (c, w)]
    swapped = list(work.order)
    a, b = (swapped.index(first[(n, (0, 1))]) for n in ("all_reduce", "all_reduce_1"))
    swapped[a], swapped[b] = swapped[b], swapped[a]
    work.order = swapped
    with pytest.raises(AssertionError, match="not issued in program order"):
        check_order(work)
