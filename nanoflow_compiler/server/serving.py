"""From a validated OpenAI request to engine requests and back: limits, tokenization, streaming and collecting.

Every check that can fail runs before the engine sees the request, so a bad request costs no KV blocks and its
error arrives as a plain JSON response, never halfway through a stream.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..llm import apply_chat_template
from ..runtime.sampling import SamplingParams
from .async_engine import AsyncEngine, Delta, EngineUnavailable, QueueFull, RequestStream
from .errors import APIError, error_body
from .protocol import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, CompletionChoice, CompletionRequest, CompletionResponse, DeltaMessage, UsageInfo,
)

MAX_TEMPERATURE = 2.0  # OpenAI's documented range is [0, 2]
RETRY_AFTER_S = 1


@dataclass
class ServingContext:
    """What the routes need besides the request: the engine, the tokenizer and the server's limits."""

    engine: AsyncEngine
    tokenizer: object | None
    model_name: str
    max_model_len: int
    vocab_size: int
    max_tokens_limit: int | None = None
    drain_timeout_s: float = 30.0


async def create_completion(req: CompletionRequest, ctx: ServingContext, http: Request):
    _check_model(req.model, ctx)
    req.check_supported()
    prompts = [_tokenize(p, ctx) for p in req.prompts()]
    params = [_sampling_params(req, req.max_tokens, "max_tokens", len(p), ctx) for p in prompts]
    request_id = f"cmpl-{uuid.uuid4().hex}"
    stream = await _submit(ctx, prompts, params, request_id)
    if req.stream:
        return _EngineStreamingResponse(stream, _completion_events(stream, request_id, req, ctx))
    texts, reasons, usage = await _collect(stream, len(prompts), http)
    choices = [CompletionChoice(index=i, text=t, finish_reason=r) for i, (t, r) in enumerate(zip(texts, reasons))]
    return JSONResponse(CompletionResponse(id=request_id, model=ctx.model_name, choices=choices,
                                           usage=usage).model_dump())


async def create_chat_completion(req: ChatCompletionRequest, ctx: ServingContext, http: Request):
    _check_model(req.model, ctx)
    req.check_supported()
    prompt = _apply_chat_template(req, ctx)
    max_tokens, field = req.requested_max_tokens()
    params = [_sampling_params(req, max_tokens, field, len(prompt), ctx)]
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    stream = await _submit(ctx, [prompt], params, request_id)
    if req.stream:
        return _EngineStreamingResponse(stream, _chat_events(stream, request_id, req, ctx))
    texts, reasons, usage = await _collect(stream, 1, http)
    choice = ChatChoice(index=0, message=AssistantMessage(content=texts[0]), finish_reason=reasons[0])
    return JSONResponse(ChatCompletionResponse(id=request_id, model=ctx.model_name, choices=[choice],
                                               usage=usage).model_dump())


# ---- checks ---------------------------------------------------------------------------------------------------


def _check_model(name: str, ctx: ServingContext) -> None:
    if name != ctx.model_name:
        raise APIError(404, f"The model '{name}' does not exist; this server serves '{ctx.model_name}'",
                       param="model", code="model_not_found")


def _tokenize(prompt: str | list[int], ctx: ServingContext) -> list[int]:
    if isinstance(prompt, str):
        if ctx.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send the prompt as token ids", param="prompt")
        ids = list(ctx.tokenizer(prompt).input_ids)  # exactly as LLM.generate tokenizes
    else:
        ids = prompt
        bad = [t for t in ids if not 0 <= t < ctx.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {ctx.vocab_size})", param="prompt")
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    return ids


def _apply_chat_template(req: ChatCompletionRequest, ctx: ServingContext) -> list[int]:
    tok = ctx.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise APIError(400, f"model '{ctx.model_name}' has no chat template: use /v1/completions", param="messages")
    messages = [{"role": m.role, "content": m.text_content()} for m in req.messages]
    try:
        return apply_chat_template(tok, messages)  # exactly as LLM.chat applies it
    except Exception as e:  # templates raise on message orders they do not support (jinja2 TemplateError)
        raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from e


def _sampling_params(req, max_tokens: int | None, field: str, prompt_len: int, ctx: ServingContext) -> SamplingParams:
    room = ctx.max_model_len - prompt_len
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {ctx.max_model_len} tokens, but the prompt "
                       f"has {prompt_len} tokens; shorten it", param="prompt", code="context_length_exceeded")
    limit = ctx.max_tokens_limit
    if max_tokens is None:  # chat: as long as the context and the server allow
        max_tokens = min(room, limit) if limit else room
    if max_tokens < 1 or (limit is not None and max_tokens > limit):
        upper = f" and at most {limit}" if limit is not None else ""
        raise APIError(400, f"'{field}' must be at least 1{upper}, got {max_tokens}", param=field,
                       code="invalid_value")
    if max_tokens > room:
        raise APIError(400, f"This model's maximum context length is {ctx.max_model_len} tokens, but you requested "
                       f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                       f"completion); reduce the prompt or '{field}'", param=field, code="context_length_exceeded")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise APIError(400, f"'temperature' must be between 0 and {MAX_TEMPERATURE}, got {temperature}",
                       param="temperature", code="invalid_value")
    params = SamplingParams(
        temperature=temperature, top_p=1.0 if req.top_p is None else req.top_p,
        top_k=-1 if req.top_k is None else req.top_k, seed=req.seed, max_tokens=max_tokens,
        stop=req.stop_list(), stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
    )
    try:
        params.validate()
    except ValueError as e:
        raise APIError(400, str(e), param=str(e).split(" ", 1)[0], code="invalid_value") from e
    return params


async def _submit(ctx: ServingContext, prompts: list[list[int]], params: list[SamplingParams], rid: str):
    try:
        return await ctx.engine.submit(prompts, params, rid)
    except QueueFull as e:
        raise APIError(429, f"server is busy: {e}; retry later", code="rate_limit_exceeded",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from e
    except EngineUnavailable as e:
        retry = str(max(1, round(ctx.drain_timeout_s))) if "draining" in str(e) else str(RETRY_AFTER_S)
        raise APIError(503, f"server is not accepting requests ({e})", code="unavailable",
                       headers={"Retry-After": retry}) from e
    except ValueError as e:  # the engine's own admission checks
        raise APIError(400, str(e), param="prompt") from e


# ---- results ----------------------------------------------------------------------------------------------


async def _collect(stream: RequestStream, n: int, http: Request) -> tuple[list[str], list[str | None], UsageInfo]:
    """Gather a non-streaming request's output; a client that hangs up aborts it (polled, as nothing is sent)."""
    texts, reasons = [""] * n, [None] * n
    prompt_tokens, generated = [0] * n, [0] * n

    async def watch_disconnect() -> None:
        while not await http.is_disconnected():
            await asyncio.sleep(0.5)
        stream.abort()  # ends the loop below; the response goes nowhere

    watcher = asyncio.create_task(watch_disconnect())
    try:
        async for d in stream:
            texts[d.index] += d.new_text
            reasons[d.index], prompt_tokens[d.index], generated[d.index] = d.finish_reason, d.num_prompt_tokens, d.num_generated
    except EngineUnavailable as e:
        raise APIError(503, f"the engine stopped before this request finished ({e})", code="unavailable") from e
    finally:
        watcher.cancel()
        stream.abort()
    usage = UsageInfo(prompt_tokens=sum(prompt_tokens), completion_tokens=sum(generated),
                      total_tokens=sum(prompt_tokens) + sum(generated))
    return texts, reasons, usage


class _EngineStreamingResponse(StreamingResponse):
    """SSE response that aborts its engine request however the response ends (client gone, cancelled, error)."""

    def __init__(self, stream: RequestStream, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.abort()


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


async def _with_usage_and_done(chunks: AsyncIterator[tuple[dict | None, Delta]], usage_chunk) -> AsyncIterator[str]:
    """SSE framing shared by both endpoints: the chunks, an optional usage chunk, then `[DONE]`; an engine failure
    mid-stream becomes an error event rather than a cut connection."""
    totals: dict[int, Delta] = {}
    try:
        async for chunk, delta in chunks:
            totals[delta.index] = delta
            if chunk is not None:
                yield _sse(chunk)
    except EngineUnavailable as e:
        yield _sse(error_body(503, f"the engine stopped before this request finished ({e})", code="unavailable"))
    if usage_chunk is not None:
        p = sum(d.num_prompt_tokens for d in totals.values())
        g = sum(d.num_generated for d in totals.values())
        yield _sse(usage_chunk(UsageInfo(prompt_tokens=p, completion_tokens=g, total_tokens=p + g)))
    yield _sse("[DONE]")


def _completion_events(stream: RequestStream, rid: str, req: CompletionRequest, ctx: ServingContext):
    base = {"id": rid, "object": "text_completion", "model": ctx.model_name}

    async def chunks():
        async for d in stream:
            if d.new_text or d.finished:
                choice = CompletionChoice(index=d.index, text=d.new_text, finish_reason=d.finish_reason)
                yield CompletionResponse(**base, choices=[choice]).model_dump(exclude={"usage"}), d
            else:
                yield None, d

    usage = (lambda u: CompletionResponse(**base, choices=[], usage=u).model_dump()) if req.include_usage else None
    return _with_usage_and_done(chunks(), usage)


def _chat_events(stream: RequestStream, rid: str, req: ChatCompletionRequest, ctx: ServingContext):
    def chunk(delta: DeltaMessage | None, finish_reason: str | None = None, usage: UsageInfo | None = None) -> dict:
        choices = [] if delta is None else [ChatChunkChoice(index=0, delta=delta, finish_reason=finish_reason)]
        out = ChatCompletionChunk(id=rid, model=ctx.model_name, choices=choices, usage=usage).model_dump()
        if usage is None:
            out.pop("usage")
        return out

    async def chunks():
        first = Delta(0, "", False, None, 0, 0)
        yield chunk(DeltaMessage(role="assistant", content="")), first
        async for d in stream:
            if d.new_text:
                yield chunk(DeltaMessage(content=d.new_text)), d
            if d.finished:
                yield chunk(DeltaMessage(), d.finish_reason), d
            elif not d.new_text:
                yield None, d

    usage = (lambda u: chunk(None, usage=u)) if req.include_usage else None
    return _with_usage_and_done(chunks(), usage)
