"""Turns a scheduled batch into the model's flat token batch, owns the KV cache and the compiled model.

The runner is the only engine component that touches tensors: it sizes and allocates the paged KV cache, builds
`input_ids`, `positions` and `AttnMetadata` for one iteration, and calls the model, compiled with the configured
torch.compile backend or eager.

With token buckets (the default for the nanoflow backend on CUDA) every size the compiled graph sees is padded to a
few values, because the graph executor captures one CUDA graph per binding of those sizes: the token count to its
bucket, the request count to min(bucket, max_num_seqs), and the block-table width to a power of two. Without that,
decode steps whose request count or context length changed would each capture a new graph (a 5,000-op capture
costs far more than the step it serves).

With async scheduling a decode row's last token may still be on the device, sampled by the previous iteration: the
runner leaves a placeholder and copies the token in with one device op before the forward, in stream order (so the
previous iteration's outputs, static CUDA-graph buffers included, are read before this forward overwrites them).
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .attention import AttnMetadata
from .config import EngineConfig
from .distributed import get_tp
from .engine_options import engine_options
from .executors.base import CompiledSchedule, take_last_run
from .executors.program import class_cuts
from .ir import MEMORY
from .sampling import SampledTokens, to_device
from .scheduler import ScheduledBatch
from .tp_channel import min_over_ranks, open_channel

log = logging.getLogger(__name__)

_CPU_KV_CAP_BYTES = 1 << 30  # plenty for CPU serving (SmolLM2-135M: ~23k tokens), and quick to allocate
_CPU_KV_RAM_SHARE = 0.25
_MIN_TABLE_WIDTH = 512  # blocks


class ModelRunner:
    def __init__(self, model: torch.nn.Module, config: EngineConfig):
        self.model = model
        self.config = config
        first = next(model.parameters())
        self.device = torch.device(config.device) if config.device is not None else first.device
        self.dtype = config.dtype or first.dtype
        self.block_size = config.block_size
        self.buckets = self._token_buckets()
        self.max_model_len = self._max_model_len()
        self.num_kv_blocks = config.num_kv_blocks or min_over_ranks(self._kv_blocks_from_memory(), self.device)
        capacity = self.num_kv_blocks * self.block_size
        if capacity < self.max_model_len:
            if config.max_model_len is not None:
                warnings.warn(f"max_model_len={config.max_model_len} exceeds the KV cache ({capacity} tokens); "
                              f"using {capacity}", stacklevel=3)
            self.max_model_len = capacity
        if self.buckets and self.buckets[-1] > capacity:
            raise ValueError(f"token bucket {self.buckets[-1]} is larger than the KV cache ({capacity} tokens in "
                             f"{self.num_kv_blocks} blocks of {self.block_size}): no iteration can fill it; use "
                             "smaller token_buckets and max_num_batched_tokens, or more KV blocks")
        model.allocate_kv_cache(self.num_kv_blocks, self.block_size, self.dtype, self.device)
        self.compile_backend: str | None = None
        self.compile_fallback: str | None = None
        self.overlap_fallback: str | None = None  # why the engine runs with overlap off where it would be on
        self.compile_seconds = 0.0
        self.min_dim = 1
        self._served: CompiledSchedule | None = None  # the nanoflow schedule that runs the compiled model
        self.forward = self._compile() if config.compile else model
        self.channel = open_channel(self.device)  # tensor parallelism: rank 0 sends each batch to the other ranks

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, previous: SampledTokens | None = None) -> torch.Tensor:
        """Run one iteration; logits [R, V] float32 for the last scheduled token of each row of `batch`. Tokens in
        flight come from `previous`, the last iteration's sampled tokens."""
        inputs = self.prepare(batch, previous)
        if self.channel is not None:
            self.channel.publish(*inputs)
        return self.forward(*inputs)[: len(batch)]

    def executor_status(self) -> list[dict]:
        """What the nanoflow executor of this runner's compiled model reports (graph captures, replays, SM
        partitions); empty when the model is eager or compiled by another backend."""
        return [] if self._served is None else [self._served.status()]

    @property
    def profile_db(self) -> str | None:
        """The database of searched plans the compiled schedule was planned from (the backend takes this GPU's where
        `nanoflow search` stored one), if any."""
        return None if self._served is None else self._served.ir.provenance.options.get("profile_db")

    def attention_cuts(self, num_tokens: int) -> list[int] | None:
        """Where the attention (MEMORY) nano-batches of an iteration of `num_tokens` scheduled tokens begin and end,
        [0, ..., padded count], as the compiled schedule splits the padded batch: the scheduler ends prefill chunks
        there, so that no request's KV prefix is read by two attention nano-ops. None without a nanoflow schedule
        (eager, another backend, a fallback) or without token buckets (the cuts then scale with every count, and
        ending chunks at them would only shrink the batch round after round)."""
        if self._served is None or not self.buckets:
            return None
        return class_cuts(self._served.ir, self._padded(max(num_tokens, self.min_dim)), MEMORY)

    def prepare(self, batch: ScheduledBatch, previous: SampledTokens | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata]:
        """The flat batch; padding tokens have slot -1 and token_req -1, padding rows of the block table (compiled
        runs only) point at block 0 and their logits are dropped."""
        late: list[tuple[int, int]] = []  # (flat index, row of `previous`) of tokens still on the device
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        token_req: list[int] = []
        logits_indices: list[int] = []
        bs = self.block_size
        for row, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            ids = seq.token_ids[start : start + num_new]
            if len(ids) < num_new:  # only a decode row's one token can be in flight
                late.append((len(input_ids), previous.rows[seq.request_id]))
                ids.append(0)
            input_ids += ids
            table = seq.block_table
            for pos in range(start, start + num_new):
                positions.append(pos)
                slots.append(table[pos // bs] * bs + pos % bs)
            token_req += [row] * num_new
            logits_indices.append(len(input_ids) - 1)
        tokens = self._padded(max(len(input_ids), self.min_dim))
        pad = tokens - len(input_ids)
        input_ids += [0] * pad
        positions += [0] * pad
        slots += [-1] * pad
        token_req += [-1] * pad
        width = max(self.min_dim, *(len(seq.block_table) for seq in batch.seqs))
        rows = max(self.min_dim, len(batch))
        if self.buckets:
            rows = max(rows, min(tokens, self.config.max_num_seqs))
            width = self._table_width(width)
        tables = np.zeros((rows, width), dtype=np.int32)
        for row, seq in enumerate(batch.seqs):
            tables[row, : len(seq.block_table)] = seq.block_table
        logits_indices += [0] * (rows - len(logits_indices))
        ids, pos, meta = self._to_device(input_ids, positions, slots, token_req, tables, logits_indices)
        if late:
            where, src = to_device(late, torch.int64, self.device).unbind(1)
            ids.index_copy_(0, where, previous.tokens.index_select(0, src))
        return ids, pos, meta

    def _to_device(self, input_ids, positions, slots, token_req, tables, logits_indices):
        def t(values, dtype):
            return to_device(values, dtype, self.device)

        meta = AttnMetadata(
            slot_mapping=t(slots, torch.int64),
            token_req=t(token_req, torch.int32),
            block_tables=t(tables, torch.int32),
            logits_indices=t(logits_indices, torch.int64),
        )
        return t(input_ids, torch.int64), t(positions, torch.int64), meta

    def _token_buckets(self) -> list[int] | None:
        """The configured buckets; on CUDA the nanoflow backend (CUDA graphs) gets `default_token_buckets`."""
        config = self.config
        if config.token_buckets:
            return sorted(set(config.token_buckets))
        if config.compile and config.backend == "nanoflow" and self.device.type == "cuda":
            return default_token_buckets(config.max_num_batched_tokens)
        return None

    def _table_width(self, width: int) -> int:
        """Padded block-table width: at least _MIN_TABLE_WIDTH blocks, so that contexts up to 8k tokens (block 16)
        share one width and each bucket one CUDA graph (a 512-wide int32 table is 512 KB per step); longer ones
        step in powers of two."""
        max_blocks = -(-self.max_model_len // self.block_size)
        return max(width, min(max_blocks, max(_MIN_TABLE_WIDTH, _next_power_of_2(width))))

    def _padded(self, num_tokens: int) -> int:
        i = bisect.bisect_left(self.buckets, num_tokens) if self.buckets else 0
        return self.buckets[i] if self.buckets and i < len(self.buckets) else num_tokens

    def _max_model_len(self) -> int:
        limit = self.model.config.max_position_embeddings  # the rope table has no rows beyond it
        wanted = self.config.max_model_len or limit
        if wanted > limit:
            raise ValueError(f"max_model_len={wanted} exceeds the model's max_position_embeddings={limit}")
        return wanted

    def _kv_blocks_from_memory(self) -> int:
        per_token = self.model.kv_bytes_per_token(self.dtype)
        if self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            wanted = self.max_model_len * self.config.max_num_seqs * per_token
            budget = min(wanted, _CPU_KV_CAP_BYTES, int(_CPU_KV_RAM_SHARE * _available_ram()))
        blocks = budget // (per_token * self.block_size)
        if blocks < 1:
            raise ValueError(f"no memory left for the KV cache (budget {budget} bytes); lower the model size or "
                             "max_num_batched_tokens, or set num_kv_blocks")
        return int(blocks)

    def _cuda_kv_budget(self) -> int:
        """What `kv_cache_memory_fraction` of the GPU leaves after weights, a full iteration's activations and
        memory held outside torch (measured with one dummy iteration, as vLLM does). The model lets go of any cache
        an earlier engine left on it before the peak is reset: the peak would otherwise count that cache, and every
        second engine of a process got a cache of a few blocks (measured on an H200)."""
        self.model.allocate_kv_cache(1, self.block_size, self.dtype, self.device)
        gc.collect()  # an engine dropped before this one may still hold its graphs in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._dummy_run(self.model, self.config.max_num_batched_tokens)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        outside_torch = total - free - torch.cuda.memory_reserved(self.device)
        self.model.allocate_kv_cache(0, self.block_size, self.dtype, self.device)
        torch.cuda.empty_cache()
        return int(self.config.kv_cache_memory_fraction * total - peak - outside_torch)

    @torch.inference_mode()
    def _dummy_run(self, forward, num_tokens: int) -> None:
        """A batch that writes nothing to the cache (slots -1) and reads only block 0.

        Its token count, request count and block-table width differ from each other and from 1, so that Dynamo
        gives each its own symbol (equal sizes would share one, and sizes 0 and 1 are specialised)."""
        num_reqs, width = [v for v in (2, 3, 4, 5) if v != num_tokens][:2] if num_tokens > 2 else (1, 2)
        token_req = [min(i, num_reqs - 1) for i in range(num_tokens)]
        last = [token_req.index(r) for r in range(num_reqs)]
        n = num_tokens
        forward(*self._to_device([0] * n, [0] * n, [-1] * n, token_req, [[0] * width] * num_reqs, last))

    def _compile(self):
        from torch._dynamo.backends.registry import lookup_backend

        name = self.config.backend
        try:
            backend = lookup_backend(name)
        except Exception as e:  # unregistered, or its entry point fails to import
            self.compile_fallback = f"torch.compile backend {name!r} is unavailable ({type(e).__name__}: {e})"
            warnings.warn(f"{self.compile_fallback}; running the model eagerly", stacklevel=4)
            return self.model
        options = dict(self.config.compile_options or {})
        if name == "nanoflow":
            chosen = engine_options(options, self.device, self.buckets, get_tp().size)
            options, self.overlap_fallback = chosen.options, chosen.overlap_fallback
        kwargs = {"options": options} if options else {}
        # dynamic=True without per-tensor marks: Dynamo's duck sizing then gives every per-token tensor the one
        # symbol T (marking each dim would give each its own symbol, and the passes could not tell they agree).
        compiled = torch.compile(self.model, backend=backend, dynamic=True, fullgraph=True, **kwargs)
        self.compile_backend = name
        # Dynamo specialises sizes 1 (and 0), so a batch of one token, one request or a one-block table would
        # compile a graph of its own; padding every such dimension to 2 keeps a single graph.
        self.min_dim = 2
        start = time.perf_counter()
        take_last_run()
        self._dummy_run(compiled, self._padded(2) if self.buckets else 8)
        self.compile_seconds = time.perf_counter() - start
        # Which schedule served the call: Dynamo may reuse a graph compiled for another model of the same shapes,
        # so nothing new need be compiled here. None: no nanoflow schedule ran (another backend, or a fallback).
        self._served = take_last_run()
        if self.buckets and self.device.type == "cuda":
            self._capture_buckets(compiled)
            self.compile_seconds = time.perf_counter() - start
        log.info("compiled the model with backend %r in %.1f s", name, self.compile_seconds)
        return compiled

    @torch.inference_mode()
    def _capture_buckets(self, forward) -> None:
        """One padding-only iteration per bucket at the sizes real iterations pad to, so that every CUDA graph (and
        fused kernel) is made at start-up, as vLLM captures its graphs, instead of inside the first timed steps."""
        from tqdm import tqdm

        width = self._table_width(1)
        for tokens in tqdm(self.buckets, desc="capturing CUDA graphs", unit="bucket", disable=None):
            rows = max(self.min_dim, min(tokens, self.config.max_num_seqs))
            forward(*self._to_device([0] * tokens, [0] * tokens, [-1] * tokens, [-1] * tokens,
                                     np.zeros((rows, width), dtype=np.int32), [0] * rows))


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_token_buckets(max_tokens: int) -> list[int]:
    """Powers of two from 16, then 3/4 of the largest and the largest: at most a third of a large step is
    padding, and there are few enough buckets that each one's schedule and CUDA graph is made once."""
    buckets = {max_tokens}
    b = 16
    while b < max_tokens:
        buckets.add(b)
        b *= 2
    if max_tokens >= 64:
        buckets.add(max_tokens * 3 // 4 // 16 * 16)
    return sorted(buckets)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()
