"""Run the app under uvicorn, in the foreground (`nanoflow serve`) or on a background thread (tests, notebooks).

Both bind the socket themselves before uvicorn starts, so port 0 works and the real port is known up front. On
SIGINT/SIGTERM (or `stop()`), the engine starts draining at once, before uvicorn's own shutdown waits for open
connections: new requests get 503 while running ones finish, and whatever is still running when the drain time is
up ends with finish_reason "abort" and a proper `[DONE]`, so uvicorn never has to cut a stream.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)
_UVICORN_GRACE_S = 5.0  # on top of the drain: time for the aborted streams to send their last chunk


class _DrainingServer(uvicorn.Server):
    """uvicorn, plus: the engine starts draining the moment a stop is asked for (the app's drain_timeout_s)."""

    def __init__(self, app: FastAPI, log_level: str):
        self._serving = app.state.serving
        super().__init__(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                        timeout_graceful_shutdown=self._serving.drain_timeout_s + _UVICORN_GRACE_S))

    def handle_exit(self, sig, frame) -> None:
        self.begin_drain()
        super().handle_exit(sig, frame)

    def begin_drain(self) -> None:
        self._serving.engine.begin_drain(self._serving.drain_timeout_s)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one); IPv6 hosts are accepted."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve `app` (from `create_app`) on `sock` until SIGINT/SIGTERM, then drain (blocking; main thread)."""
    _DrainingServer(app, log_level).run(sockets=[sock])


class ServerThread:
    """`app` (from `create_app`) served on a background thread at http://host:port; `stop()` drains and joins it.

    Use as a context manager. The port is bound before the thread starts (0 picks a free one), so `url` is
    valid as soon as the constructor returns and `start()` has waited for the app's startup.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app = app
        self._sock = bind_socket(host, port)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._server = _DrainingServer(app, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="nanoflow-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout_s:
                raise RuntimeError(f"the server on {self.url} failed to start (see the log above)")
            self._thread.join(0.05)
            waited += 0.05
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        if self._thread.is_alive():
            self._server.begin_drain()
            self._server.should_exit = True
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
