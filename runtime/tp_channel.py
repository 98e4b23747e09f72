"""Engine-level tensor parallelism: rank 0 schedules, every rank runs the model on the batch rank 0 prepared.

Only rank 0 owns the scheduler, tokenizer, detokenizer and sampler; the other ranks (followers) hold their weight
shard and KV cache and run the same forward on the same flat batch, because every collective inside the model
needs all ranks. Each iteration rank 0 sends the batch as plain int tensors, never pickled objects: first a
header with the sizes (tokens T, block-table rows R and width W, logits rows L) on a CPU gloo group, then one
int64 payload [input_ids | positions | slot_mapping | token_req | block_tables | logits_indices] on the model's
own group and device (NCCL on GPU). A header with T = -1 tells the followers to stop.

Timeouts: a follower waits for a header without limit (an idle server sends nothing for as long as no request
comes), yet never hangs on a dead rank 0: gloo reports the closed connection at once, and the launcher (or
torchrun) ends the other ranks when one fails. Rank 0's header sends give up after a minute, so a rank 0 that
failed inside a forward (its followers still in a collective) says so and exits instead of waiting for them. The
payload follows its header at once, so it travels on the model group with the launcher's timeout.
"""

from __future__ import annotations

import datetime
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .attention import AttnMetadata
from .distributed import get_tp

_STOP = -1
_HEADER = 4  # T, R, W, L
_IDLE_TIMEOUT = datetime.timedelta(days=365)  # a served model may see no request for a long time
_SEND_TIMEOUT = datetime.timedelta(seconds=60)  # followers take a header at once unless stuck in a collective

_open: BatchChannel | None = None  # the channel of this process's live engine, until the stop is exchanged


class BatchChannel:
    """Rank 0 `publish`es each iteration's batch; followers `receive` it (None once rank 0 `stop`s)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rank = get_tp().rank
        self.stopped = False
        # Every rank makes it at engine start. The timeout is each rank's own: followers wait for the next batch
        # without limit, while rank 0's sends fail after a while where a follower is stuck (in a collective rank 0
        # left when it failed inside a forward) instead of waiting for it forever.
        timeout = _SEND_TIMEOUT if self.rank == 0 else _IDLE_TIMEOUT
        self._group = dist.new_group(backend="gloo", timeout=timeout)

    def publish(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> None:
        rows, width = meta.block_tables.shape
        self._send_header([input_ids.numel(), rows, width, meta.logits_indices.numel()])
        payload = torch.cat([input_ids, positions, meta.slot_mapping, meta.token_req.long(),
                             meta.block_tables.long().flatten(), meta.logits_indices])
        dist.broadcast(payload, 0)

    def receive(self) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata] | None:
        header = torch.empty(_HEADER, dtype=torch.int64)
        try:
            dist.broadcast(header, 0, group=self._group)
        except RuntimeError as e:  # rank 0 exited or crashed: say so instead of a bare socket error
            raise RuntimeError(f"tensor-parallel rank {self.rank}: lost rank 0 while waiting for the next batch "
                               f"(rank 0 stopped without telling the followers, or failed): {e}") from e
        tokens, rows, width, num_logits = header.tolist()
        if tokens == _STOP:
            self._close()
            return None
        payload = torch.empty(4 * tokens + rows * width + num_logits, dtype=torch.int64, device=self.device)
        dist.broadcast(payload, 0)
        ids, pos, slots, req, tables, logits = payload.split([tokens] * 4 + [rows * width, num_logits])
        meta = AttnMetadata(slots, req.int(), tables.int().view(rows, width), logits)
        return ids, pos, meta

    def stop(self) -> None:
        """Release the followers (rank 0, once)."""
        if not self.stopped:
            self._send_header([_STOP, 0, 0, 0])
            self._close()

    def _close(self) -> None:
        """Every rank, after the stop: wait until all have it, then free the group now (a group left to the
        interpreter's exit is torn down after its peers closed their sockets, which can abort the process). The
        wait is bounded: a rank 0 that fails inside a forward leaves its followers in a collective, and must not
        wait for them forever; gloo's monitored barrier then names the ranks that never came."""
        self.stopped = True
        dist.monitored_barrier(group=self._group, timeout=_SEND_TIMEOUT)
        dist.destroy_process_group(self._group)
        self._group = None

    def _send_header(self, sizes: list[int]) -> None:
        if self.rank != 0:
            raise RuntimeError(f"only rank 0 drives the engine; rank {self.rank} tried to send a batch")
        try:
            dist.broadcast(torch.tensor(sizes, dtype=torch.int64), 0, group=self._group)
        except RuntimeError as e:
            raise RuntimeError(f"tensor-parallel rank 0: a follower did not take the next batch header within "
                               f"{_SEND_TIMEOUT.seconds} s (stuck in a collective this rank left, or gone): {e}") from e


def open_channel(device: torch.device) -> BatchChannel | None:
    """The channel of a new engine on every rank (None without tensor parallelism). Called at the same point of
    every rank's engine start, after the engine's own start-up collectives."""
    global _open
    if get_tp().size == 1:
        return None
    if _live() is not None:
        raise RuntimeError("a tensor-parallel process group serves one engine at a time; stop the followers of the "
                           "previous engine (`leading()` does) before building another")
    _open = BatchChannel(device)
    return _open


def stop_followers() -> None:
    """Rank 0: tell the followers of the live engine, if any, to stop. Other ranks and TP=1: nothing to do."""
    if (channel := _live()) is not None and get_tp().rank == 0:
        channel.stop()


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value` (KV blocks: each rank measures its own memory, and a block id must mean
    the same slot on every rank); `value` itself without tensor parallelism."""
    if get_tp().size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


@contextmanager
def leading() -> Iterator[None]:
    """Rank 0's work runs inside this; the followers are released when it ends, also when it raises (an engine
    that was never built has no followers waiting: the launcher ends them)."""
    try:
        yield
    finally:
        stop_followers()


@torch.inference_mode()
def follow(runner) -> int:
    """A follower's life: run `runner`'s model on each batch rank 0 sends, until it says stop; returns the number
    of iterations. Ctrl-C is left to rank 0 (it drains, then stops us), so it is ignored here meanwhile."""
    channel = runner.channel
    if channel is None:
        raise RuntimeError("follow() needs a tensor-parallel engine (world size > 1)")
    with _ignoring_sigint():
        steps = 0
        while (batch := channel.receive()) is not None:
            runner.forward(*batch)
            steps += 1
    return steps


def _live() -> BatchChannel | None:
    """The open channel of this process's live engine, if any (none once the process group is gone)."""
    if _open is None or _open.stopped or not dist.is_initialized():
        return None
    return _open


@contextmanager
def _ignoring_sigint() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
