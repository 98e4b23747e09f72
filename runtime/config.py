"""Engine configuration: batching limits, KV-cache size, compilation. Re-exported as `runtime.engine.EngineConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EngineConfig:
    """Knobs of one engine. None means "derive it": KV blocks from memory, max_model_len from the model config,
    dtype and device from the model's weights."""

    max_num_batched_tokens: int = 512  # NanoFlow's dense batch: tokens per iteration, decode and prefill together
    max_num_seqs: int = 256
    block_size: int = 16
    num_kv_blocks: int | None = None
    max_model_len: int | None = None
    kv_cache_memory_fraction: float = 0.9  # share of device memory the weights, activations and KV cache may take
    compile: bool = True
    compile_options: dict | None = None
    token_buckets: list[int] | None = None  # pad each iteration's token count up to one of these (CUDA graphs)
    dtype: torch.dtype | None = None
    device: str | torch.device | None = None
    backend: str = "nanoflow"  # torch.compile backend; falls back to eager, with a warning, when not registered
    enable_prefix_caching: bool = True
    async_scheduling: bool | None = None  # schedule iteration i+1 while i runs; None: on for CUDA without TP

    def validate(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("num_kv_blocks", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):
            raise ValueError(f"async_scheduling must be True, False or None (auto), got {self.async_scheduling!r}")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction!r}")
        if self.token_buckets is not None:
            if not self.token_buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                             for b in self.token_buckets):
                raise ValueError(f"token_buckets must be a non-empty list of integers >= 1, got {self.token_buckets!r}")
            if max(self.token_buckets) < self.max_num_batched_tokens:
                raise ValueError(
                    f"the largest token bucket ({max(self.token_buckets)}) must hold a full iteration of "
                    f"max_num_batched_tokens={self.max_num_batched_tokens} tokens"
                )
