"""Server fixtures: a fake engine with LLMEngine's interface (fast, deterministic) for limits and protocol tests,
and the real SmolLM2 engine behind a uvicorn thread on 127.0.0.1 (free port) for the end-to-end tests."""

from __future__ import annotations

import pytest

from nanoflow_compiler.server import create_app
from nanoflow_compiler.server.launch import ServerThread
from server_fakes import FakeEngine, FakeTokenizer


@pytest.fixture
def fake_server():
    """Start a server on a FakeEngine with the given app options; all servers stop at the end of the test."""
    servers = []

    def start(engine: FakeEngine | None = None, **options) -> ServerThread:
        engine = engine or FakeEngine()
        app = create_app(engine, FakeTokenizer(), **{"model_name": "fake", **options})
        server = ServerThread(app).start()
        server.engine = engine
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
