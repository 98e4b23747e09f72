"""Graphs go before the process group: NCCL's communicator teardown waits for every graph that captured one of its
collectives (pytorch#115388), so `destroy_tensor_parallel` must release them first."""

from __future__ import annotations

import torch.distributed as dist
from nanoflow_compiler.runtime import distributed
from nanoflow_compiler.runtime.executors import graph


class _Executor:
    def __init__(self, graphs: int) -> None:
        self.graphs = graphs

    def release(self) -> int:
        released, self.graphs = self.graphs, 0
        return released


def test_release_graphs_releases_every_live_executor_and_forgets_dead_ones(monkeypatch):
    live = graph.weakref.WeakSet()
    monkeypatch.setattr(graph, "_LIVE", live)
    a, b = _Executor(2), _Executor(3)
    live.add(a)
    live.add(b)
    live.add(_Executor(7))  # no strong reference: gone before the release
    assert graph.release_graphs() == 5
    assert a.graphs == b.graphs == 0 and graph.release_graphs() == 0


def test_the_group_is_destroyed_after_the_graphs_are_released(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy_process_group"))
    monkeypatch.setattr(distributed, "release_graphs", lambda: calls.append("release_graphs") or 0)
    distributed.destroy_tensor_parallel()
    assert calls == ["release_graphs", "destroy_process_group"]
    assert distributed.get_tp().size == 1
