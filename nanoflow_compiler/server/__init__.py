"""OpenAI-compatible HTTP serving: `create_app(engine, tokenizer, ...)` and the uvicorn launcher behind `nanoflow serve`."""

from .app import create_app

__all__ = ["create_app"]
