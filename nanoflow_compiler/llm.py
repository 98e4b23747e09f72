"""`LLM`: offline batched generation in a few lines, the way vLLM's `LLM` is used."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from .models import LoadedModel, load_model
from .runtime.engine import EngineConfig, LLMEngine, RequestOutput
from .runtime.sampling import SamplingParams

Prompt = str | list[int]


class LLM:
    """Load a model (None = the default SmolLM2-135M-Instruct, a preset, a safetensors dir or a GGUF file, or an
    already `LoadedModel`) and serve it with an `LLMEngine` built from `engine_kwargs` (EngineConfig fields)."""

    def __init__(self, model: str | LoadedModel | None = None, **engine_kwargs):
        dtype = engine_kwargs.get("dtype") or torch.float32
        device = engine_kwargs.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        self.engine = LLMEngine(loaded.model, loaded.tokenizer, EngineConfig(**engine_kwargs))
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text, or token ids); the outputs come back in the prompts' order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        token_ids = [self._encode(p) for p in prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(token_ids)
        if len(sampling_params) != len(token_ids):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(token_ids)} prompts")
        return self._run(token_ids, list(sampling_params), use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the tokenizer's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; use generate() with plain prompts")
        token_ids = [apply_chat_template(self.tokenizer, conv) for conv in conversations]
        return self.generate(token_ids, sampling_params, use_tqdm)

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model {self.name!r} has no tokenizer (a random-weight preset?); pass token ids")
            return self.tokenizer(prompt).input_ids
        return list(prompt)

    def _run(self, token_ids: list[list[int]], params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        from tqdm.auto import tqdm

        ids = [f"llm-{next(self._ids)}" for _ in token_ids]
        try:
            for rid, prompt, p in zip(ids, token_ids, params, strict=True):
                self.engine.add_request(rid, prompt, p)
        except ValueError:  # refuse the whole batch; the engine keeps serving whatever else it has
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        order = {rid: i for i, rid in enumerate(ids)}
        results: list[RequestOutput | None] = [None] * len(ids)
        generated = 0
        with tqdm(total=len(ids), desc="Generating", unit="req", disable=not use_tqdm) as bar:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    generated += len(out.new_token_ids)
                    if out.finished and out.request_id in order:
                        results[order[out.request_id]] = out
                        bar.update(1)
                bar.set_postfix(tokens=generated, refresh=False)
        return results


def apply_chat_template(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation plus the assistant's turn header, across transformers versions."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
