from nanoflow_compiler.runtime.block_manager import BlockManager
from nanoflow_compiler.runtime.sampling import SamplingParams
from nanoflow_compiler.runtime.scheduler import Scheduler
from nanoflow_compiler.runtime.sequence import Sequence, SequenceStatus


def make(num_blocks=64, block_size=4, budget=16, max_seqs=8, prefix_caching=False):
    return Scheduler(BlockManager(num_blocks, block_size, prefix_caching), budget, max_seqs)


def add(sched, rid, n):
    s = Sequence(rid, list(range(1000 * len(rid) + n, 1000 * len(rid) + 2 * n)), SamplingParams())
    sched.add(s)
    return s


def step(sched):
    """One iteration as the engine runs it, with token 7 as every sampled token."""
    batch = sched.schedule()
    plan = {s.request_id: n for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)}
    sampled = [s for i, s in enumerate(batch.seqs) if batch.samples(i)]
    sched.complete(batch)
    for s in sampled:
        s.append_token(7)
    return batch, plan


def test_token_budget_is_never_exceeded_and_prefill_is_chunked():
    sched = make(budget=16)
    a = add(sched, "a", 40)
    _, plan = step(sched)
    assert plan == {"a": 16}
    _, plan = step(sched)
    assert plan == {"a": 16}
    _, plan = step(sched)
    assert plan == {"a": 8}
    assert a.output_token_ids == [7] and a.num_computed_tokens == 40


def test_decode_tokens_go_first_and_prefill_fills_the_rest():
    sched = make(budget=10)
    a, b = add(sched, "a", 3), add(sched, "b", 3)
    step(sched)  # both prefills fit: 6 tokens
    assert a.num_pending_tokens == 1 and b.num_pending_tokens == 1
    c = add(sched, "c", 30)
    batch, plan = step(sched)
    assert [s.request_id for s in batch.seqs[:2]] == ["a", "b"]
    assert plan == {"a": 1, "b": 1, "c": 8}
    assert batch.num_tokens == 10
    assert not batch.samples(2) and c.num_computed_tokens == 8


def test_running_prefill_goes_before_new_requests():
    sched = make(budget=8)
    add(sched, "a", 20)
    step(sched)
    add(sched, "b", 5)
    _, plan = step(sched)
    assert plan == {"a": 8}
    _, plan = step(sched)
    assert plan == {"a": 4, "b": 4}


def test_max_num_seqs_limits_admission():
    sched = make(budget=100, max_seqs=2)
    for rid in "abc":
        add(sched, rid, 3)
    _, plan = step(sched)
    assert set(plan) == {"a", "b"} and len(sched.waiting) == 1


def test_admission_waits_for_free_blocks():
    sched = make(num_blocks=4, block_size=4, budget=100)
    add(sched, "a", 12)
    add(sched, "b", 8)
    _, plan = step(sched)
    assert plan == {"a": 12}  # b needs 2 blocks, 1 is free
    assert [s.request_id for s in sched.waiting] == ["b"]


def test_preemption_evicts_the_newest_and_requeues_it_at_the_front():
    sched = make(num_blocks=6, block_size=4, budget=64)
    add(sched, "a", 8)
    add(sched, "b", 7)
    c = add(sched, "c", 3)
    step(sched)  # a: 2 blocks, b: 2, c: 1 -> 5 of 6 used
    d = add(sched, "d", 2)
    step(sched)  # a's 9th token takes the last free block; b and c decode in place; d cannot be admitted
    assert sched.num_preemptions == 0 and d.status is SequenceStatus.WAITING
    batch, plan = step(sched)
    # b's 9th token needs a block: the newest running request, c, is preempted for it
    assert sched.num_preemptions == 1 and batch.num_preempted == 1
    assert c.status is SequenceStatus.WAITING and c.num_computed_tokens == 0 and c.block_table == []
    assert [s.request_id for s in sched.waiting] == ["c", "d"]
    assert plan == {"a": 1, "b": 1}  # no admission in an iteration that had to preempt
    assert c.output_token_ids == [7, 7]  # it keeps its output and recomputes it later
    step(sched)
    assert c.status is SequenceStatus.WAITING  # still no room


def test_preempting_several_requeues_the_oldest_victim_first():
    sched = make(num_blocks=4, block_size=2, budget=64)
    for rid in "abcd":
        add(sched, rid, 1)
    step(sched)  # one block each, all used
    step(sched)  # second tokens fit in the first blocks
    batch, plan = step(sched)  # every request needs a second block: a preempts d, b preempts c
    assert plan == {"a": 1, "b": 1}
    assert sched.num_preemptions == 2
    assert [s.request_id for s in sched.waiting] == ["c", "d"]
    used = [b for s in sched.running for b in s.block_table]
    assert len(used) == len(set(used)) == 4


def test_a_request_preempts_itself_when_everything_newer_is_already_scheduled():
    sched = make(num_blocks=2, block_size=2, budget=64)
    add(sched, "a", 1)
    add(sched, "b", 2)
    step(sched)
    batch, plan = step(sched)  # a decodes in place; b needs a block, and a is already in this batch
    assert plan == {"a": 1}
    assert [s.request_id for s in sched.waiting] == ["b"] and sched.num_preemptions == 1


def test_finish_frees_blocks_and_abort_works_while_waiting():
    sched = make()
    a, b = add(sched, "a", 5), add(sched, "b", 5)
    step(sched)
    free = sched.block_manager.num_free_blocks
    sched.finish(a, "stop")
    assert sched.block_manager.num_free_blocks == free + 2 and a.finish_reason == "stop"
    c = add(sched, "c", 3)
    sched.finish(c, "abort")
    assert c not in sched.waiting and c.is_finished
    assert sched.running == [b]


def halves(buckets):
    """Cut points of a compiled model with two attention nano-batches per bucket: [0, bucket / 2, bucket]."""
    def cut_points(n):
        bucket = next(b for b in buckets if b >= n)
        return [0, bucket // 2, bucket]

    return cut_points


def aligned_make(buckets, **kwargs):
    sched = make(**kwargs)
    sched.cut_points = halves(buckets)
    return sched


def test_a_prefill_chunk_ends_at_the_attention_cut_and_the_next_request_fills_the_budget():
    sched = aligned_make([8, 16], budget=16)
    a, b = add(sched, "a", 10), add(sched, "b", 20)
    batch, plan = step(sched)
    assert plan == {"a": 8, "b": 8} and batch.num_tokens == 16  # without the cut: a 10, b 6, a across token 8
    c = add(sched, "c", 5)
    batch, plan = step(sched)  # a's last 2 tokens, b up to the cut, c after it
    assert plan == {"a": 2, "b": 6, "c": 5} and [s.request_id for s in batch.seqs] == ["a", "b", "c"]
    assert a.num_computed_tokens == 10 and b.num_computed_tokens == 14 and c.num_computed_tokens == 5


def test_chunks_are_trimmed_to_the_cuts_of_a_smaller_bucket():
    sched = aligned_make([8, 16, 32], budget=32)
    for rid, n in (("a", 6), ("b", 5), ("c", 3)):
        add(sched, rid, n)
    batch, plan = step(sched)  # 14 tokens pad to 16, cut at 8: b ends there, c starts there
    assert plan == {"a": 6, "b": 2, "c": 3} and batch.num_tokens == 11
    _, plan = step(sched)  # decodes first; b's 3 tokens would cross bucket 8's cut at 4: 2 of them, still bucket 8
    assert plan == {"a": 1, "b": 2, "c": 1}


def test_alignment_never_shrinks_the_iteration_to_a_smaller_bucket():
    sched = aligned_make([8, 16], budget=16)
    a = add(sched, "a", 14)
    batch, plan = step(sched)  # ending a at 8 would pad to bucket 8: a keeps its 14 tokens and straddles
    assert plan == {"a": 14} and batch.num_tokens == 14
    assert a.num_computed_tokens == 14 and len(a.block_table) == 4
