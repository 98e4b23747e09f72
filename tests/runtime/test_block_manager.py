import pytest

from nanoflow_compiler.runtime.block_manager import BlockManager
from nanoflow_compiler.runtime.sampling import SamplingParams
from nanoflow_compiler.runtime.sequence import Sequence


def seq(tokens, rid="r"):
    return Sequence(rid, list(tokens), SamplingParams())


def run_all(bm, s):
    """Allocate `s` in full (as a finished prefill) and register its full blocks."""
    hits = bm.match_prefix(s)
    bm.allocate(s, hits, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.commit(s)
    return hits


def test_allocate_append_free_round_trip():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    s = seq(range(10))
    assert bm.can_allocate([], 10)
    bm.allocate(s, [], 10)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    s.num_computed_tokens = 10
    assert bm.can_append(s, 2) and bm.can_append(s, 6) and not bm.can_append(s, 23)
    bm.append(s, 2)  # tokens 10, 11 still fit in block 3
    assert len(s.block_table) == 3
    bm.append(s, 3)
    assert len(s.block_table) == 4 and bm.num_free_blocks == 4
    assert len(set(s.block_table)) == 4
    bm.free(s)
    assert s.block_table == [] and bm.num_free_blocks == 8


def test_can_allocate_counts_free_blocks():
    bm = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=False)
    assert bm.can_allocate([], 12) and not bm.can_allocate([], 13)
    bm.allocate(seq(range(5)), [], 5)
    assert bm.can_allocate([], 4) and not bm.can_allocate([], 5)


def test_two_sequences_never_share_a_fresh_block():
    bm = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    a, b = seq(range(5), "a"), seq(range(100, 105), "b")
    bm.allocate(a, [], 5)
    bm.allocate(b, [], 5)
    assert not set(a.block_table) & set(b.block_table)


def test_full_blocks_are_reused_by_a_later_sequence_with_the_same_prefix():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    run_all(bm, a)
    b = seq([1, 2, 3, 4, 5, 6, 7, 8, 42, 43], "b")
    hits = bm.match_prefix(b)
    assert hits == a.block_table[:2]
    bm.allocate(b, hits, b.num_tokens)
    assert b.num_computed_tokens == b.num_cached_tokens == 8
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert bm.num_prefix_hit_tokens == 8
    # a different first block breaks the chain even when the second block's tokens match
    c = seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "c")
    assert bm.match_prefix(c) == []


def test_at_least_one_token_is_left_to_compute():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(range(8), "a")
    run_all(bm, a)
    b = seq(range(8), "b")  # identical, block-aligned: the last block must be recomputed for its logits
    assert bm.match_prefix(b) == a.block_table[:1]


def test_freed_blocks_stay_cached_until_handed_out_again():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq([1, 2, 3, 4, 5], "a")
    run_all(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = seq([1, 2, 3, 4, 9], "b")
    hits = bm.match_prefix(b)
    assert len(hits) == 2
    assert bm.can_allocate(hits, 5)
    bm.allocate(b, hits, 5)
    assert bm.num_free_blocks == 1  # two reclaimed from the free list, one fresh
    bm.free(b)
    # filling the whole cache with other tokens evicts every old name
    c = seq(range(100, 108), "c")
    run_all(bm, c)
    assert bm.match_prefix(seq([1, 2, 3, 4, 5], "d")) == []


def test_eviction_takes_least_recently_freed_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    old, new = seq([1, 2, 3], "old"), seq([7, 8, 9], "new")
    run_all(bm, old)
    run_all(bm, new)
    bm.free(old)
    bm.free(new)
    bm.allocate(seq(range(50, 54), "x"), [], 4)  # two fresh blocks: the two freed by `old`
    assert bm.match_prefix(seq([1, 2, 3], "o2")) == []
    assert len(bm.match_prefix(seq([7, 8, 9], "n2"))) == 1


def test_shared_blocks_are_freed_only_by_their_last_owner():
    bm = BlockManager(num_blocks=5, block_size=2)
    a = seq([1, 2, 3], "a")
    run_all(bm, a)
    b = seq([1, 2, 4], "b")
    run_all(bm, b)
    assert a.block_table[0] == b.block_table[0]
    bm.free(a)
    assert bm.num_free_blocks == 3  # block 0 is still b's
    bm.free(b)
    assert bm.num_free_blocks == 5


def test_rejects_an_empty_cache():
    with pytest.raises(ValueError, match="at least one block"):
        BlockManager(num_blocks=0, block_size=16)
