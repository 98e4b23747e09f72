"""What the multi-stream and CUDA-graph executors decide without a GPU: the stream plan (events, allocation
streams, cross-stream buffer uses), the issue loop against recording fake streams, partition validation, the
fallback to plain streams (a warning and a status field, never silent), and how "auto" picks an executor."""

from __future__ import annotations

import pytest
import torch
from executor_batches import fill_caches, mixed_batch
from nanoflow_compiler.runtime import partitions
from nanoflow_compiler.runtime.executors import stream as stream_mod
from nanoflow_compiler.runtime.executors.base import select_executor
from nanoflow_compiler.runtime.executors.graph import GraphExecutor
from nanoflow_compiler.runtime.executors.sequential import SequentialExecutor, run_program
from nanoflow_compiler.runtime.executors.stream import StreamExecutor, partition_shares, plan_streams, run_streams
from nanoflow_compiler.runtime.ir import StreamSpec

from nanoflow_compiler import backend

BLOCK = 4


def traced(tiny_config, options, requests=None):
    """A tiny Llama compiled with the sequential executor; returns (compiled schedule, call(batch) -> args seen)."""
    from nanoflow_compiler.models import random_model

    model = random_model(tiny_config(), torch.float32, "cpu")
    kwargs = {} if requests is None else {"requests": requests}
    ids, pos, meta, blocks = mixed_batch(model.config.vocab_size, BLOCK, **kwargs)
    fill_caches(model, blocks + 8, BLOCK, torch.float32, "cpu")
    torch._dynamo.reset()
    with backend.capture() as compiled, torch.no_grad():
        fn = torch.compile(model, backend="nanoflow", dynamic=True, fullgraph=True,
                           options={"executor": "sequential", **options})
        fn(ids, pos, meta)
    schedule = compiled[0]
    reference, seen = schedule.executor, []
    schedule.executor = lambda args: seen.append(args) or reference(args)

    def call(batch):
        with torch.no_grad():
            fn(*batch)
        return seen[-1]

    return schedule, reference, call, (ids, pos, meta)


def program_env(reference: SequentialExecutor, args):
    env = dict(reference.constants)
    env.update(zip(reference._input_names, args))
    return reference.programs.get(args), env


def test_plan_records_each_waited_event_before_its_waits_on_another_stream(tiny_config):
    _, reference, call, batch = traced(tiny_config, {"nano_batches": {"COMPUTE": 2, "MEMORY": 3}})
    program, _ = program_env(reference, call(batch))
    plan = plan_streams(program)
    assert plan.streams == [0, 1] and plan.num_events > 0
    recorded: dict[int, int] = {}
    for ps in plan.steps:
        for slot in ps.waits:
            assert slot in recorded, f"{ps.step.op.node} waits for an event nobody recorded yet"
            assert recorded[slot] != ps.stream
        if ps.record is not None:
            recorded[ps.record] = ps.stream
    assert sorted(recorded) == list(range(plan.num_events))


def test_buffers_are_allocated_on_their_first_users_stream_and_shared_with_the_others(tiny_config):
    _, reference, call, batch = traced(tiny_config, {"nano_batches": 2})
    program, _ = program_env(reference, call(batch))
    plan = plan_streams(program)
    by_output = {name: ps for ps in plan.steps for name in ps.step.op.outputs if name is not None}
    compute, memory = 0, 1
    attention_out = by_output["paged_attention"]  # written by attention, read by the O projection
    assert attention_out.step.op.kind == "alloc" and attention_out.stream == memory
    assert attention_out.shares == (("paged_attention", (compute,)),)
    qkv = by_output["mm"]  # written by the QKV GEMM, V read (through views) by the KV append
    assert qkv.stream == compute and qkv.shares == (("mm", (memory,)),)
    mlp = by_output["mm_2"]  # COMPUTE only: nothing to record
    assert mlp.stream == compute and mlp.shares == ()


class FakeCuda:
    """Streams and events that log what the executor asks of them; ops run at once on the CPU."""

    def __init__(self, monkeypatch):
        self.log: list[tuple] = []
        self.caller = FakeStream("caller", self)
        self.current = self.caller
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_stream", self._set)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: self.log.append(("share", s.name)))

    def _set(self, stream):
        self.current = stream


class FakeStream:
    def __init__(self, name, cuda: FakeCuda):
        self.name, self.cuda = name, cuda

    def wait_stream(self, other):
        self.cuda.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        self.cuda.log.append(("wait", self.name, event.slot))


class FakeEvent:
    def __init__(self, slot, cuda: FakeCuda):
        self.slot, self.cuda = slot, cuda

    def record(self, stream):
        self.cuda.log.append(("record", stream.name, self.slot))


@pytest.mark.parametrize("tokens", ["mixed", "fewer than nano-batches"])
def test_issue_loop_forks_launches_on_each_stream_and_joins(tiny_config, monkeypatch, tokens):
    _, reference, call, batch = traced(tiny_config, {"nano_batches": {"COMPUTE": 2, "MEMORY": 4}})
    if tokens != "mixed":  # two decode tokens: two of the four attention nano-ops are empty
        ids, pos, meta, _ = mixed_batch(tiny_config().vocab_size, BLOCK, requests=[(9, 1), (3, 1)], pad=0)
        batch = (ids, pos, meta)
    args = call(batch)
    program, env = program_env(reference, args)
    with torch.no_grad():
        expected = run_program(program, dict(env))
    cuda = FakeCuda(monkeypatch)
    plan = plan_streams(program)
    streams = {0: FakeStream("compute", cuda), 1: FakeStream("memory", cuda)}
    events = [FakeEvent(i, cuda) for i in range(plan.num_events)]

    def launched(ps):
        def fn(*a, **k):
            cuda.log.append(("launch", cuda.current.name, ps.step.op.id))
            return ps.step.fn(*a, **k)
        return None if ps.step.fn is None else fn

    with torch.no_grad():
        got = run_streams(program, plan, [launched(ps) for ps in plan.steps], env, streams, events)
    torch.testing.assert_close(got, expected)
    log = cuda.log
    assert log[:2] == [("wait_stream", "compute", "caller"), ("wait_stream", "memory", "caller")]
    assert log[-2:] == [("wait_stream", "caller", "compute"), ("wait_stream", "caller", "memory")]
    assert cuda.current is cuda.caller
    names = {None: None, 0: "compute", 1: "memory"}
    for ps in plan.steps:  # every device op launched on its own stream
        if ps.step.fn is not None and ps.step.op.stream is not None:
            assert ("launch", names[ps.step.op.stream], ps.step.op.id) in log
    recorded = set()
    for entry in log:  # waits come after the record they wait for
        if entry[0] == "record":
            recorded.add(entry[2])
        elif entry[0] == "wait":
            assert entry[2] in recorded
    assert ("share", "compute") in log and ("share", "memory") in log
    empty = [ps for ps in plan.steps if ps.step.fn is None]
    assert (len(empty) > 0) == (tokens != "mixed")
    for ps in empty:  # an empty nano-op launches nothing but keeps its event
        if ps.record is not None:
            assert ("record", names[ps.step.op.stream], ps.record) in log


def test_partition_shares_put_the_remainder_last():
    specs = [StreamSpec(0, ["COMPUTE", "LIGHT"], 100), StreamSpec(1, ["MEMORY"], 32)]
    assert list(partition_shares(specs, 8).items()) == [("MEMORY", 32), ("COMPUTE", 100)]


def fake_device(monkeypatch, sms: int, disjoint: bool = True):
    props = type("Props", (), {"multi_processor_count": sms})()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(partitions, "sm_layout", lambda device=None: partitions.SmLayout(sms, 8, 8, "test"))
    monkeypatch.setattr(stream_mod, "_PARTITIONS", {})

    def make(shares, device=None, allow_fallback=True):
        partitions.validate_shares(shares, partitions.sm_layout())
        if disjoint:
            return {n: partitions.PartitionStream(n, object(), k, True, "test") for n, k in shares.items()}
        import warnings
        warnings.warn("SM partitions fall back to plain streams", RuntimeWarning, stacklevel=2)
        return {n: partitions.PartitionStream(n, object(), k, False, "plain-streams", "no green contexts here")
                for n, k in shares.items()}

    monkeypatch.setattr(partitions, "make_partitions", make)


def test_missing_partitions_fall_back_to_plain_streams_with_a_warning_and_a_field(tiny_config, monkeypatch):
    schedule, *_ = traced(tiny_config, {"nano_batches": 2})
    fake_device(monkeypatch, 132, disjoint=False)
    with pytest.warns(RuntimeWarning, match="plain streams sharing all SMs .no green contexts here"):
        executor = StreamExecutor(schedule.ir, {})
    status = executor.status()
    assert status["disjoint"] is False and status["fallback_reason"] == "no green contexts here"
    assert status["layouts"][0][1]["partition"]["backend"] == "plain-streams"
    assert any("plain streams" in note for note in schedule.ir.provenance.notes)


def test_sm_counts_the_device_cannot_give_are_an_error(tiny_config, monkeypatch):
    schedule, *_ = traced(tiny_config, {"nano_batches": 2, "sm_plan": {"COMPUTE": 96, "MEMORY": 32}})
    fake_device(monkeypatch, 114)  # an H100 PCIe: the plan was made for 132 SMs
    with pytest.raises(partitions.PartitionError, match=r"ask for 128 SMs .* but the device has 114"):
        StreamExecutor(schedule.ir, {})


def test_one_stream_with_the_whole_device_needs_no_partitions(tiny_config, monkeypatch):
    schedule, *_ = traced(tiny_config, {"overlap": False})
    fake_device(monkeypatch, 132)
    executor = StreamExecutor(schedule.ir, {})
    assert executor.status()["layouts"] == [[{"stream": 0, "sms": 132, "partition": None}]]


def test_auto_is_graph_on_cuda_and_sequential_on_cpu(monkeypatch):
    assert select_executor("auto", torch.device("cpu"), {}) == (SequentialExecutor, None)
    cls, reason = select_executor("graph", torch.device("cpu"), {})
    assert cls is SequentialExecutor and "needs a CUDA device" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_executor("auto", torch.device("cuda", 0), {}) == (GraphExecutor, None)
    assert select_executor("auto", torch.device("cuda", 0), {"cuda_graphs": False}) == (StreamExecutor, None)
    cls, reason = select_executor("graph", torch.device("cuda", 0), {"cuda_graphs": False})
    assert cls is SequentialExecutor and "cuda_graphs=False" in reason
