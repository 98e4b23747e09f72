"""The serving engine: requests in, one scheduler -> runner -> sampler iteration per `step()`, outputs out.

Every step runs one dense batch (decode tokens first, chunked prefill after), samples a token for each request whose
scheduled tokens reach its end, detokenises incrementally and retires requests that hit EOS, a stop token or string,
max_tokens or the context length. Bad requests are refused in `add_request`, before they touch any engine state.

With async scheduling (NanoFlow's "CPU scheduling runs one iteration ahead", vLLM V1's async scheduling) a step
schedules and launches iteration i+1 before the tokens of iteration i are on the host: the device keeps working while
the host appends them, checks stops and detokenises. Outputs therefore come one step later; a request that iteration
i finished was already scheduled into i+1, and the token it gets there is discarded.
"""

from __future__ import annotations

import time

import torch

from .block_manager import BlockManager
from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer
from .distributed import get_tp
from .model_runner import ModelRunner
from .sampling import SampledTokens, Sampler, SamplingParams, make_generator, to_device
from .scheduler import Scheduler
from .sequence import RequestOutput, Sequence

__all__ = ["EngineConfig", "LLMEngine", "RequestOutput"]


class LLMEngine:
    """Serves one model. The engine allocates the model's KV cache and owns it: a second engine built on the same
    model object takes the cache over, so use one engine per model at a time."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.config.validate()
        self.model = model
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, self.config)
        self.async_scheduling = _async_scheduling(self.config, self.runner.device)
        self.block_manager = BlockManager(self.runner.num_kv_blocks, self.config.block_size,
                                          self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_batched_tokens, self.config.max_num_seqs,
                                   self.runner.attention_cuts)
        self.sampler = Sampler()
        self.eos_token_ids = _eos_ids(model.config, tokenizer)
        self.vocab_size = model.config.vocab_size
        self._seqs: dict[str, Sequence] = {}
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._pending: list[RequestOutput] = []  # abort notices, handed out by the next step
        self._inflight: SampledTokens | None = None  # async: the launched iteration whose tokens are not yet handled
        self._counters = dict(num_steps=0, num_computed_tokens=0, num_generated_tokens=0,
                              last_num_batched_tokens=0, last_iteration_seconds=0.0)

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None) -> None:
        """Queue a request; raises ValueError (and changes nothing) for an invalid one."""
        params = params or SamplingParams()
        params.validate()
        if request_id in self._seqs:
            raise ValueError(f"request id {request_id!r} is already in use")
        try:
            ids = [int(t) for t in prompt_token_ids]
        except (TypeError, ValueError) as e:
            raise ValueError(f"prompt_token_ids must be a list of integers: {e}") from e
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but the context holds {self.max_model_len} "
                             f"(max_model_len), which leaves no room for output; shorten the prompt")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model has none; use stop_token_ids")
        seq = Sequence(request_id, ids, params, make_generator(params.seed, self.runner.device))
        self._seqs[request_id] = seq
        self._detokenizers[request_id] = IncrementalDetokenizer(self.tokenizer, ids, params.stop)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        """Drop a request; its final output (finish_reason "abort") comes with the next step.
        Unknown ids are ignored."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.finish(seq, "abort")
        detok = self._detokenizers.pop(request_id)
        self._pending.append(self._output(seq, [], detok.flush(), detok.text))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._pending) or self._inflight is not None

    def step(self) -> list[RequestOutput]:
        """Launch one iteration and return the outputs of the tokens that reached the host: this iteration's, or with
        async scheduling the previous one's (handled while this one runs)."""
        outputs, self._pending = self._pending, []
        start = time.perf_counter()
        batch = self.scheduler.schedule()
        launched = self._launch(batch) if batch.seqs else None
        if self.async_scheduling:
            launched, self._inflight = self._inflight, launched
        if launched is not None:
            outputs += self._receive(launched)
        if batch.seqs:
            c = self._counters
            c["num_steps"] += 1
            c["num_computed_tokens"] += batch.num_tokens
            c["last_num_batched_tokens"] = batch.num_tokens
            c["last_iteration_seconds"] = time.perf_counter() - start
        return outputs

    def stats(self) -> dict:
        total = self.block_manager.num_blocks
        free = self.block_manager.num_free_blocks
        return dict(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_free_blocks=free,
            num_total_blocks=total,
            kv_usage=(total - free) / total,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hit_tokens=self.block_manager.num_prefix_hit_tokens,
            max_model_len=self.max_model_len,
            block_size=self.config.block_size,
            compile_backend=self.runner.compile_backend,
            compile_fallback=self.runner.compile_fallback,
            overlap_fallback=self.runner.overlap_fallback,
            profile_db=self.runner.profile_db,
            compile_seconds=self.runner.compile_seconds,
            async_scheduling=self.async_scheduling,
            **self._counters,
        )

    def _launch(self, batch) -> SampledTokens | None:
        """Run `batch` and sample its rows that reach their end, all on the device; None if no row samples."""
        logits = self.runner.execute(batch, self._inflight)
        rows = [i for i in range(len(batch)) if batch.samples(i)]
        self.scheduler.complete(batch)
        if not rows:
            return None
        seqs = [batch.seqs[i] for i in rows]
        if len(rows) < len(batch):
            logits = logits.index_select(0, to_device(rows, torch.int64, logits.device))
        tokens = self.sampler.sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        for seq in seqs:
            seq.num_inflight += 1
        return SampledTokens(seqs, tokens)

    def _receive(self, sampled: SampledTokens) -> list[RequestOutput]:
        """Hand the sampled tokens to their requests; a request that finished or was aborted meanwhile drops its."""
        outputs = []
        for seq, token in zip(sampled.seqs, sampled.tolist(), strict=True):
            seq.num_inflight -= 1
            if not seq.is_finished:
                outputs.append(self._append(seq, token))
        self._counters["num_generated_tokens"] += len(outputs)
        return outputs

    def _append(self, seq: Sequence, token: int) -> RequestOutput:
        seq.append_token(token)
        detok = self._detokenizers[seq.request_id]
        new_text, stop_string_hit = detok.add([token])
        params = seq.params
        reason = None
        if stop_string_hit or token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            reason = "stop"
        elif len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens - seq.num_inflight >= self.max_model_len:
            reason = "length"
        if reason is not None:
            new_text += detok.flush()
            self.scheduler.finish(seq, reason)
            del self._seqs[seq.request_id], self._detokenizers[seq.request_id]
        return self._output(seq, [token], new_text, detok.text)

    def _output(self, seq: Sequence, new_ids: list[int], new_text: str, text: str) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id, prompt_token_ids=seq.prompt_token_ids, new_token_ids=new_ids,
            new_text=new_text, token_ids=list(seq.output_token_ids),
            text=text, finished=seq.is_finished, finish_reason=seq.finish_reason,
            arrival_time=seq.arrival_time, first_token_time=seq.first_token_time, finish_time=seq.finish_time,
            num_cached_tokens=seq.num_cached_tokens,
        )


def _async_scheduling(config: EngineConfig, device: torch.device) -> bool:
    """On by default on CUDA, where the host work it hides is measured (5.7-7.5 ms of a 40-47 ms step on an
    H200); off under tensor parallelism, whose followers get the batch from the host before the forward."""
    tp = get_tp().size > 1
    if config.async_scheduling is None:
        return device.type == "cuda" and not tp
    if config.async_scheduling and tp:
        raise ValueError("async_scheduling=True is not supported with tensor parallelism yet; leave it None or False")
    return config.async_scheduling


def _eos_ids(model_config, tokenizer) -> set[int]:
    """EOS ids from the model config (an int or a list) and the tokenizer."""
    ids = model_config.eos_token_id
    eos = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return eos
