"""OpenAI wire format: the request bodies we accept and the response bodies we send.

Requests allow extra fields (clients send some we ignore), but every field we read is strictly typed (no "10" for
10), so pydantic's validation errors become the 400s OpenAI clients expect. Fields we do not implement are accepted only
at their neutral value; anything else is rejected by name rather than silently ignored.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from .errors import APIError

# Chosen so that clients sending OpenAI's documented defaults pass, and anything that would change the output
# in a way we cannot honour fails loudly.
_UNSUPPORTED_NEUTRAL: dict[str, Any] = {
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": None, "logprobs": None, "top_logprobs": None,
    "suffix": None, "best_of": 1, "echo": False, "tools": None, "tool_choice": None, "response_format": None,
    "functions": None, "function_call": None,
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """The fields completions and chat share; sampling values are range-checked by SamplingParams.validate()."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM extension
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    ignore_eos: bool = False  # vLLM extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def check_supported(self) -> None:
        """Reject fields we parse but do not implement, unless they carry their no-op value."""
        extra = self.model_extra or {}
        for name, neutral in _UNSUPPORTED_NEUTRAL.items():
            value = extra.get(name, neutral)
            if value != neutral and not (neutral is None and value in ({}, [])):
                raise APIError(400, f"'{name}' is not supported by this server", param=name)
        if self.n != 1:
            raise APIError(400, f"'n' must be 1 (got {self.n}): this server returns one choice per prompt", param="n")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    # A string, a batch of strings, one token-id list or a batch of them, as in OpenAI's legacy API.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "'prompt' must not be empty", param="prompt")
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "developer", "tool"]
    # Content parts ([{"type": "text", "text": ...}]) are joined; other part types are refused in text_content().
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text_content(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"only text content parts are supported, got type {part.get('type')!r}",
                               param="messages")
            texts.append(part["text"])
        return "".join(texts)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The limit the client asked for and the field it used (the newer name wins)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


# ---- responses ----------------------------------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def _now() -> int:
    return int(time.time())


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _only_set(self) -> dict[str, str]:
        """OpenAI omits absent delta fields (the final chunk's delta is `{}`), rather than sending nulls."""
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "nanoflow"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
