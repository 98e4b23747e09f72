"""The FastAPI app: routes, API-key check, error handlers, metrics and the engine loop's lifetime.

`create_app` takes a ready `LLMEngine` (anything with its interface), so tests can serve a fake engine and the CLI
the real one; the app starts the engine loop on startup and drains it on shutdown.
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .async_engine import AsyncEngine
from .errors import APIError, error_body, install_error_handlers
from .metrics import RequestCounterMiddleware, ServerMetrics
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from .serving import ServingContext, create_chat_completion, create_completion


def create_app(
    engine,
    tokenizer,
    *,
    model_name: str,
    max_model_len: int | None = None,
    vocab_size: int | None = None,
    api_key: str | None = None,
    max_queued: int | None = None,
    max_tokens_limit: int | None = None,
    drain_timeout_s: float = 30.0,
) -> FastAPI:
    """An OpenAI-compatible app serving `engine` (an `LLMEngine`) under the name `model_name`.

    max_model_len and vocab_size default to the engine's own; the limits are off when None.
    """
    max_model_len = max_model_len or engine.max_model_len
    vocab_size = vocab_size or engine.vocab_size
    metrics = ServerMetrics()
    async_engine = AsyncEngine(engine, max_queued=max_queued, metrics=metrics)
    metrics.track_engine(async_engine.stats)
    ctx = ServingContext(async_engine, tokenizer, model_name, max_model_len, vocab_size, max_tokens_limit,
                         drain_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        async_engine.start()
        yield
        await async_engine.shutdown(drain_timeout_s)

    app = FastAPI(title="nanoflow", version=__version__, lifespan=lifespan)
    app.state.serving = ctx
    install_error_handlers(app)

    def check_api_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not secrets.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])

    @v1.get("/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, max_model_len=max_model_len)])

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await create_completion(body, ctx, request)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat_completion(body, ctx, request)

    app.include_router(v1)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = async_engine.status
        if status == "ok":
            return JSONResponse({"status": "ok"})
        return JSONResponse({**error_body(503, f"engine {status}", code="unavailable"), "status": status},
                            status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    endpoints = {"/v1/models", "/v1/completions", "/v1/chat/completions"}
    app.add_middleware(RequestCounterMiddleware, metrics=metrics, endpoints=endpoints)
    return app
