import pytest
import torch

from nanoflow_compiler.models import random_model
from nanoflow_compiler.runtime.config import EngineConfig
from nanoflow_compiler.runtime.model_runner import ModelRunner, default_token_buckets
from nanoflow_compiler.runtime.sampling import SamplingParams
from nanoflow_compiler.runtime.scheduler import ScheduledBatch
from nanoflow_compiler.runtime.sequence import Sequence


@pytest.fixture
def tiny(tiny_config):
    return random_model(tiny_config(), torch.float32, "cpu")


def seq(tokens, table, computed=0):
    s = Sequence("r", list(tokens), SamplingParams())
    s.block_table, s.num_computed_tokens = list(table), computed
    return s


def test_flat_batch_and_metadata(tiny):
    runner = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=8, block_size=4))
    prefill = seq(range(10, 16), [5, 2], computed=2)  # a chunk: tokens 2..5
    decode = seq(range(30, 39), [7, 1, 3], computed=8)  # one token at position 8
    ids, pos, meta = runner.prepare(ScheduledBatch([prefill, decode], [4, 1]))
    assert ids.tolist() == [12, 13, 14, 15, 38]
    assert pos.tolist() == [2, 3, 4, 5, 8]
    assert meta.slot_mapping.tolist() == [5 * 4 + 2, 5 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 3 * 4 + 0]
    assert meta.token_req.tolist() == [0, 0, 0, 0, 1]
    assert meta.block_tables.tolist() == [[5, 2, 0], [7, 1, 3]]
    assert meta.logits_indices.tolist() == [3, 4]
    assert meta.token_req.dtype == torch.int32 and meta.block_tables.dtype == torch.int32
    assert meta.slot_mapping.dtype == torch.int64


def test_padding_to_a_token_bucket(tiny):
    runner = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=8, block_size=4,
                                            max_num_batched_tokens=16, token_buckets=[4, 16, 8]))
    ids, pos, meta = runner.prepare(ScheduledBatch([seq(range(5), [0, 1])], [5]))
    assert len(ids) == 8
    assert meta.slot_mapping.tolist()[5:] == [-1, -1, -1] and meta.token_req.tolist()[5:] == [-1, -1, -1]
    padded = runner.execute(ScheduledBatch([seq(range(5), [0, 1])], [5]))
    plain = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=8, block_size=4))
    torch.testing.assert_close(padded, plain.execute(ScheduledBatch([seq(range(5), [0, 1])], [5])))


def test_buckets_pad_rows_and_table_width_so_graphs_are_reused(tiny):
    """Requests to min(bucket, max_num_seqs), width to a power of two: steps whose request count or context
    grows keep the sizes (and CUDA graph) of the step before."""
    runner = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=32, block_size=4, max_num_seqs=6,
                                            max_num_batched_tokens=16, token_buckets=[4, 16]))
    batch = ScheduledBatch([seq(range(9), [3, 4, 5], computed=8), seq(range(3), [6], computed=2)], [1, 1])
    ids, _, meta = runner.prepare(batch)
    # the table is as wide as the longest context allows (32 blocks of 4 tokens): one width for every step
    assert (len(ids), *meta.block_tables.shape, len(meta.logits_indices)) == (4, 4, 32, 4)
    assert meta.block_tables.tolist()[1] == [6] + [0] * 31
    big = ScheduledBatch([seq(range(5), [1, 2], computed=0)] + [seq(range(3), [7 + i], computed=2) for i in range(5)],
                         [5, 1, 1, 1, 1, 1])
    ids, _, meta = runner.prepare(big)
    assert (len(ids), *meta.block_tables.shape) == (16, 6, 32)
    plain = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=32, block_size=4))
    torch.testing.assert_close(runner.execute(batch), plain.execute(batch))


def test_default_buckets_are_few_and_hold_a_full_step():
    assert default_token_buckets(1024) == [16, 32, 64, 128, 256, 512, 768, 1024]
    assert default_token_buckets(2048)[-2:] == [1536, 2048] and default_token_buckets(8) == [8]


def test_a_bucket_larger_than_the_kv_cache_is_an_error(tiny):
    with pytest.raises(ValueError, match="token bucket 64 is larger than the KV cache .32 tokens in 8 blocks of 4"):
        ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=8, block_size=4, max_num_batched_tokens=16,
                                       token_buckets=[16, 64]))


def test_buckets_must_hold_a_full_iteration():
    with pytest.raises(ValueError, match="largest token bucket"):
        EngineConfig(max_num_batched_tokens=64, token_buckets=[16, 32]).validate()


def test_cpu_cache_size_defaults_from_context_and_sequences(tiny):
    runner = ModelRunner(tiny, EngineConfig(compile=False, max_model_len=64, max_num_seqs=3, block_size=16))
    assert runner.num_kv_blocks == 64 * 3 // 16
    assert tiny.layers[0].self_attn.k_cache.shape == (12, 16, 2, 16)


def test_context_is_bounded_by_the_model_and_the_cache(tiny):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ModelRunner(tiny, EngineConfig(compile=False, max_model_len=100_000))
    with pytest.warns(UserWarning, match="exceeds the KV cache"):
        runner = ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=4, block_size=4, max_model_len=100))
    assert runner.max_model_len == 16
    assert ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=4, block_size=4)).max_model_len == 16


def test_unknown_backend_falls_back_to_eager_and_says_so(tiny):
    with pytest.warns(UserWarning, match="no-such-backend"):
        runner = ModelRunner(tiny, EngineConfig(compile=True, backend="no-such-backend", num_kv_blocks=4))
    assert runner.compile_backend is None and "no-such-backend" in runner.compile_fallback
    assert runner.forward is tiny


def test_compiled_model_matches_eager(tiny):
    """Dynamo's own 'eager' backend: checks that the runner's inputs trace in one graph with dynamic token dims."""
    cfg = dict(num_kv_blocks=8, block_size=4)

    def batches():
        return [ScheduledBatch([seq(range(7), [0, 1])], [7]),
                ScheduledBatch([seq(range(9), [2, 3, 4], 5), seq(range(3), [5], 2)], [4, 1])]

    eager = ModelRunner(tiny, EngineConfig(compile=False, **cfg))
    expected = [eager.execute(b) for b in batches()]
    torch._dynamo.reset()
    compiled = ModelRunner(tiny, EngineConfig(compile=True, backend="eager", **cfg))
    assert compiled.compile_backend == "eager" and compiled.compile_fallback is None
    for b, want in zip(batches(), expected, strict=True):
        torch.testing.assert_close(compiled.execute(b), want)


def test_attention_cuts_are_none_without_a_nanoflow_schedule_or_buckets(tiny):
    assert ModelRunner(tiny, EngineConfig(compile=False, num_kv_blocks=8, block_size=4, max_num_batched_tokens=16,
                                          token_buckets=[8, 16])).attention_cuts(5) is None
    assert ModelRunner(tiny, EngineConfig(num_kv_blocks=8, block_size=4)).attention_cuts(5) is None  # no buckets


def _straddles(rows: list[int], cuts: list[int]) -> list[tuple[int, int, int]]:
    """(start, length, cut) of each row whose tokens lie on both sides of a cut."""
    found, start = [], 0
    for n in rows:
        found += [(start, n, c) for c in cuts if start < c < start + n]
        start += n
    return found


def test_engine_aligns_requests_to_the_attention_nano_batches_and_keeps_the_eager_tokens(tiny_config):
    """A nanoflow-compiled engine with token buckets: every step's attention cuts fall between requests, except
    where only a smaller bucket could make them (the scheduler never shrinks a step for it); tokens equal eager."""
    from nanoflow_compiler.runtime.engine import LLMEngine

    prompts = [[3] * 13, [5, 6], list(range(20, 41)), [9] * 7, list(range(50, 61)), [4] * 3]
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=6)
    config = dict(num_kv_blocks=64, block_size=4, max_num_batched_tokens=16, token_buckets=[8, 16])
    outputs = {}
    for compile_ in (False, True):
        engine = LLMEngine(random_model(tiny_config(), torch.float32, "cpu"), None,
                           EngineConfig(compile=compile_, **config))
        runner, seen = engine.runner, []
        execute = runner.execute

        def checked(batch, previous=None, *, execute=execute, runner=runner, seen=seen):
            cuts = runner.attention_cuts(batch.num_tokens)
            if cuts is not None:
                for start, n, cut in _straddles(batch.num_new_tokens, cuts[1:-1]):
                    assert runner.attention_cuts(batch.num_tokens - (start + n - cut))[-1] < cuts[-1], (
                        f"request [{start}, {start + n}) straddles attention cut {cut} of bucket {cuts[-1]}")
                seen.append((list(batch.num_new_tokens), cuts))
            return execute(batch, previous)

        runner.execute = checked
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    outputs.setdefault(compile_, {})[out.request_id] = out.token_ids
    assert outputs[True] == outputs[False] and len(outputs[True]) == len(prompts)
    assert engine.stats()["compile_backend"] == "nanoflow"
    # the alignment had work to do: steps whose real tokens reach past a cut, all of them between requests
    aligned = [rows for rows, cuts in seen if any(c < sum(rows) for c in cuts[1:-1]) and not _straddles(rows, cuts[1:-1])]
    assert len(aligned) >= 3



class _FakeCudaMemory:
    """The caching allocator's counters as the KV budget reads them: live bytes, a resettable peak, total memory."""

    def __init__(self, weights: int, total: int):
        self.live, self.peak, self.total = weights, weights, total

    def hold(self, delta: int) -> None:
        self.live += delta
        self.peak = max(self.peak, self.live)


def test_the_kv_budget_ignores_a_cache_an_earlier_engine_left_on_the_model(monkeypatch):
    """The second engine of a process (LLM twice, a benchmark's settings) used to reset the memory peak while the
    model still held the first engine's cache, and got a cache of a few blocks (on an H200: 69 blocks after 56,332)."""
    from types import SimpleNamespace

    mem = _FakeCudaMemory(weights=16 << 30, total=140 << 30)
    for name, fn in {"empty_cache": lambda: None, "synchronize": lambda device=None: None,
                     "reset_peak_memory_stats": lambda device=None: setattr(mem, "peak", mem.live),
                     "max_memory_allocated": lambda device=None: mem.peak,
                     "mem_get_info": lambda device=None: (mem.total - mem.live, mem.total),
                     "memory_reserved": lambda device=None: mem.live}.items():
        monkeypatch.setattr(torch.cuda, name, fn)

    class Model:
        block_bytes, blocks = 1 << 20, 0

        def allocate_kv_cache(self, num_blocks, block_size, dtype, device):
            mem.hold((num_blocks - self.blocks) * self.block_bytes)
            self.blocks = num_blocks

    def budget(left_blocks: int) -> int:
        model = Model()
        model.allocate_kv_cache(left_blocks, 16, None, None)  # what the previous engine left on the model
        runner = SimpleNamespace(model=model, block_size=16, dtype=None, device="cuda",
                                 config=EngineConfig(max_num_batched_tokens=8, kv_cache_memory_fraction=0.9),
                                 _dummy_run=lambda forward, tokens: (mem.hold(1 << 30), mem.hold(-(1 << 30))))
        return ModelRunner._cuda_kv_budget(runner)

    fresh = budget(0)
    assert fresh == int(0.9 * (140 << 30)) - (16 << 30) - (1 << 20) - (1 << 30)  # weights, one block, activations
    assert budget(100_000) == fresh  # ~98 GiB of an earlier cache on the model change nothing
