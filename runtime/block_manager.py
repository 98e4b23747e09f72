"""Paged KV-cache bookkeeping: which cache blocks each sequence owns, with prefix reuse of full blocks.

A full block is named by a hash chain, (hash of the previous block, its tokens), as in vLLM, so a block's name
pins down the whole prefix before it. Blocks of finished or preempted sequences go back to the free list with their
name kept, and a later sequence with the same prefix takes them back instead of recomputing; a free block loses its
name only when it is handed out fresh. The free list is ordered least recently freed first, so eviction is LRU.
"""

from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence

BlockKey = tuple[int | None, tuple[int, ...]]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[BlockKey | None] = [None] * num_blocks
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[BlockKey, int] = {}
        self.num_prefix_hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the longest run of `seq`'s leading full blocks; at least one token is left to
        compute, because the model must run on the last token to give the next token's logits."""
        if not self.enable_prefix_caching:
            return []
        tokens, hits, parent = seq.token_ids, [], None
        for i in range((seq.num_tokens - 1) // self.block_size):
            key = (parent, tuple(tokens[i * self.block_size : (i + 1) * self.block_size]))
            block = self.cached.get(key)
            if block is None:
                break
            hits.append(block)
            parent = hash(key)
        return hits

    def can_allocate(self, hits: list[int], num_tokens: int) -> bool:
        """Whether a new sequence with these prefix hits can get blocks for its first `num_tokens` tokens."""
        reclaimed = sum(1 for b in hits if self.ref_counts[b] == 0)  # hits waiting in the free list
        return self.blocks_for(num_tokens) - len(hits) <= self.num_free_blocks - reclaimed

    def allocate(self, seq: Sequence, hits: list[int], num_tokens: int) -> None:
        """Give `seq` the hit blocks (their tokens count as computed) and fresh blocks up to `num_tokens`."""
        assert not seq.block_table, "allocate is for a sequence that holds no blocks"
        for block in hits:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
            seq.block_hashes.append(hash(self.block_keys[block]))
        seq.block_table = list(hits)
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size
        self.num_prefix_hit_tokens += seq.num_cached_tokens
        self._grow(seq, num_tokens)

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        need = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return need <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        self._grow(seq, seq.num_computed_tokens + num_new_tokens)

    def free(self, seq: Sequence) -> None:
        """Release `seq`'s blocks, tail first, so that its least reusable blocks are evicted first."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
        seq.block_table = []
        seq.block_hashes = []

    def commit(self, seq: Sequence) -> None:
        """Name the blocks of `seq` that are now full and computed, so that later sequences can reuse them."""
        if not self.enable_prefix_caching:
            return
        tokens, bs = seq.token_ids, self.block_size  # a block whose last token is still in flight waits
        for i in range(len(seq.block_hashes), min(seq.num_computed_tokens, len(tokens)) // bs):
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            key = (parent, tuple(tokens[i * bs : (i + 1) * bs]))
            block = seq.block_table[i]
            if key not in self.cached:  # the same prefix computed twice at once keeps the first copy
                self.cached[key] = block
                self.block_keys[block] = key
            seq.block_hashes.append(hash(key))

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            block, _ = self.free_blocks.popitem(last=False)
            key = self.block_keys[block]
            if key is not None:  # evict its old name
                if self.cached.get(key) == block:
                    del self.cached[key]
                self.block_keys[block] = None
            self.ref_counts[block] = 1
            seq.block_table.append(block)
