"""Continuous batching with a dense token budget per iteration, as NanoFlow runs it.

Each iteration fills at most `max_num_batched_tokens` tokens: every running decode token first, then chunks of the
prefills in progress, then new requests admitted while free KV blocks last. When a running sequence needs a block
and none is free, the newest running sequence not yet in this iteration is preempted by recompute: its blocks are
freed and it goes back to the front of the queue (its full blocks stay in the prefix cache until evicted). The
scheduler hands the runner plain Python objects, never tensors.

With `cut_points` (the model runner's `attention_cuts`: where the compiled schedule's attention nano-batches begin
and end for the bucket a token count pads to), a prefill chunk that would straddle a cut of a full iteration's
bucket ends at it, so that no request's KV prefix is read by two attention nano-ops, and the budget it leaves goes
to the next requests. Rows are laid out in batch order, decode tokens first (one per request: they never
straddle). A batch that comes out smaller pads to a smaller bucket with other cuts: its straddling chunks are then
trimmed to those, round after round to a fixed point (trimming only lowers the count). One rule bounds this:
alignment never moves the iteration to a smaller bucket (chunks ended early get their tokens back first). A lone
long prefill would otherwise be cut to half a bucket, then half of that, ... (4x the steps for one 1,024-token
prompt on an engine whose 1,024 and 512 buckets are split); where only a smaller bucket could align a chunk, it
keeps its tokens and straddles.

With async scheduling the engine schedules iteration i+1 before the tokens of iteration i reach the host: a sequence
with a token in flight (`num_inflight`) counts it and is scheduled as a decode row, with blocks reserved for it, as
if it were known; its row takes the token on the device. A preempted sequence waits until its token has arrived,
since a batch that preempts admits nobody.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """One iteration's work: `num_new_tokens[i]` tokens of `seqs[i]`, starting at its `num_computed_tokens`."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def samples(self, i: int) -> bool:
        """Whether row i reaches the end of its sequence this iteration, so its logits give a new token."""
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_new_tokens[i] == seq.num_tokens

    def __len__(self) -> int:
        return len(self.seqs)


CutPoints = Callable[[int], "list[int] | None"]  # token count -> [0, cut, ..., padded count], or None


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_batched_tokens: int, max_num_seqs: int,
                 cut_points: CutPoints | None = None):
        self.block_manager = block_manager
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.cut_points = cut_points
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest admission first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        cuts = self.cut_points(budget) if self.cut_points is not None else None
        ended: list[tuple[int, int]] = []  # (row, tokens it left at a cut)
        # Decode tokens first (one each), then the prefills already running, in admission order.
        for decode_pass in (True, False):
            for seq in list(self.running):
                if budget == 0:
                    break
                if seq.status is not SequenceStatus.RUNNING or (seq.num_pending_tokens == 1) != decode_pass:
                    continue
                if seq.num_inflight and len(seq.output_token_ids) + seq.num_inflight >= seq.params.max_tokens:
                    continue  # its token in flight is its last: running it would only make one to discard
                wanted = min(seq.num_pending_tokens, budget)
                num_new = _to_cut(self.max_num_batched_tokens - budget, wanted, cuts)
                if self._reserve(seq, num_new, batch):
                    ended += [(len(batch), wanted - num_new)] if num_new < wanted else []
                    batch.seqs.append(seq)
                    batch.num_new_tokens.append(num_new)
                    budget -= num_new
        # New requests, unless this iteration had to preempt: re-admitting a victim at once would only thrash.
        while self.waiting and budget > 0 and not batch.num_preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.block_manager.match_prefix(seq)
            num_cached = len(hits) * self.block_manager.block_size
            wanted = min(seq.num_tokens - num_cached, budget)
            num_new = _to_cut(self.max_num_batched_tokens - budget, wanted, cuts)
            if not self.block_manager.can_allocate(hits, num_cached + num_new):
                break
            ended += [(len(batch), wanted - num_new)] if num_new < wanted else []
            self.waiting.popleft()
            self.block_manager.allocate(seq, hits, num_cached + num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        if cuts is not None:
            self._align(batch, cuts[-1], ended)
        return batch

    def complete(self, batch: ScheduledBatch) -> None:
        """The model has run `batch`: its tokens are in the cache now, and newly full blocks become reusable."""
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
            self.block_manager.commit(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire a sequence (stopped, out of length, or aborted) and return its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.finish(reason)

    def _align(self, batch: ScheduledBatch, planned: int, ended: list[tuple[int, int]]) -> None:
        """Chunks that ended at a cut of the planned (full) bucket but were not followed by enough tokens to keep it
        get their tokens back; then chunks straddling a cut of the bucket the batch pads to are trimmed to it, until
        none does, except where trimming would move the batch to a smaller bucket. Blocks of trimmed tokens stay
        with their sequence for its next chunk."""
        if self.cut_points(batch.num_tokens)[-1] < planned:
            for row, tokens in ended:
                seq, num = batch.seqs[row], batch.num_new_tokens[row]
                tokens = min(tokens, self.max_num_batched_tokens - batch.num_tokens)
                if tokens and self.block_manager.can_append(seq, num + tokens):
                    self.block_manager.append(seq, num + tokens)
                    batch.num_new_tokens[row] = num + tokens
        trimmed = True
        while trimmed:
            total, start, trimmed = batch.num_tokens, 0, False
            cuts = self.cut_points(total)
            for i, num in enumerate(batch.num_new_tokens):
                fit = _to_cut(start, num, cuts)
                if fit < num and self.cut_points(total - num + fit)[-1] == cuts[-1]:
                    batch.num_new_tokens[i], total, trimmed = fit, total - num + fit, True
                start += batch.num_new_tokens[i]

    def _reserve(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Blocks for `num_new` more tokens of a running sequence, preempting newer unscheduled ones if needed.
        False when `seq` itself had to be preempted."""
        while not self.block_manager.can_append(seq, num_new):
            victims = [s for s in self.running if s is not seq and not any(s is b for b in batch.seqs)]
            victim = victims[-1] if victims else seq
            self._preempt(victim)
            batch.num_preempted += 1
            if victim is seq:
                return False
        self.block_manager.append(seq, num_new)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1


def _to_cut(start: int, num: int, cuts: list[int] | None) -> int:
    """How many of `num` tokens laid out from `start` fit before the first cut they would straddle."""
    for cut in cuts or ():
        if start < cut < start + num:
            return cut - start
    return num
