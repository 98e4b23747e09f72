"""One engine loop for all connections: a background thread owns the `LLMEngine`, asyncio handlers talk to it.

The engine is not thread-safe and its `step()` blocks for a whole iteration, so it lives on one thread that does
nothing else: it takes commands (add, abort, stop) from a thread-safe queue between steps, so new requests join
the running batch at the next iteration (continuous batching), and it hands each output to the asking request's
asyncio queue through `loop.call_soon_threadsafe`. Handlers never touch the engine directly.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting for their first token than `max_queued` allows."""


class EngineUnavailable(Exception):
    """The engine is draining for shutdown, stopped, or died; `reason` says which."""


@dataclass
class Delta:
    """What one engine step produced for one prompt of a request (engine-independent, also made up for aborts)."""

    index: int
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_generated: int


@dataclass
class _Sub:
    stream: RequestStream
    index: int
    num_prompt_tokens: int
    admitted_at: float = field(default_factory=time.perf_counter)
    num_generated: int = 0


class RequestStream:
    """The deltas of one API request (one or more prompts), in order, on the event loop that submitted it."""

    def __init__(self, engine: AsyncEngine, request_ids: list[str], loop: asyncio.AbstractEventLoop):
        self.request_ids = request_ids
        self._engine, self._loop = engine, loop
        self._queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()  # None: aborted here
        self.accepted: asyncio.Future[None] = loop.create_future()
        self._unfinished = len(request_ids)

    async def __aiter__(self) -> AsyncIterator[Delta]:
        while self._unfinished:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                self._unfinished = 0
                raise item
            self._unfinished -= item.finished
            yield item

    def abort(self) -> None:
        """Free the engine's work and KV blocks for every prompt not finished yet, and end the iteration
        (idempotent; call on the stream's own event loop)."""
        if self._unfinished:
            self._unfinished = 0
            self._engine._send("abort", self)
            self._queue.put_nowait(None)

    # Called from the engine thread only.
    def _deliver(self, item: Delta | BaseException) -> None:
        self._call(self._queue.put_nowait, item)

    def _resolve(self, error: BaseException | None) -> None:
        def settle() -> None:
            if not self.accepted.done():
                self.accepted.set_exception(error) if error else self.accepted.set_result(None)
        self._call(settle)

    def _call(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the client's loop is closed: nobody is listening any more
            pass


class AsyncEngine:
    """Runs `engine` (an `LLMEngine`) on a background thread; `submit()` from any asyncio handler."""

    def __init__(self, engine, max_queued: int | None = None, metrics=None):
        self.engine, self.max_queued, self.metrics = engine, max_queued, metrics
        self._cmds: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._subs: dict[str, _Sub] = {}  # engine thread only
        self._lock = threading.Lock()
        self._queued = 0  # admitted, no token yet; guarded by _lock
        self._draining_until: float | None = None
        self._dead: str | None = None
        self._stats: dict = {}
        self._thread = threading.Thread(target=self._run, name="nanoflow-engine", daemon=True)

    # ---- asyncio side ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def status(self) -> str:
        """'ok', 'draining' or 'dead: <why>' (what /health reports)."""
        if self._dead:
            return f"dead: {self._dead}"
        return "draining" if self._draining_until is not None else "ok"

    def stats(self) -> dict:
        """The engine's latest stats snapshot plus the server's queue depth (safe from any thread)."""
        with self._lock:
            return {**self._stats, "queue_depth": self._queued}

    @property
    def num_active(self) -> int:
        """Engine requests not finished (a racy read, good for polling)."""
        return len(self._subs)

    async def submit(self, prompts: list[list[int]], params: list, request_id: str) -> RequestStream:
        """Admit one API request's prompts; raises QueueFull, EngineUnavailable, or the engine's ValueError."""
        if self.status != "ok":
            raise EngineUnavailable(self.status)
        with self._lock:
            if self.max_queued is not None and self._queued + len(prompts) > self.max_queued:
                raise QueueFull(f"{self._queued} requests are already waiting (limit {self.max_queued})")
            self._queued += len(prompts)
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        stream = RequestStream(self, ids, asyncio.get_running_loop())
        self._send("add", stream, prompts, params)
        try:
            await stream.accepted
        except asyncio.CancelledError:
            stream.abort()
            raise
        return stream

    def begin_drain(self, timeout: float) -> None:
        """Refuse new requests; let running ones finish for `timeout` s, then end them with finish_reason 'abort'."""
        if self._draining_until is None:
            self._draining_until = time.monotonic() + timeout
            self._send("wake")

    async def shutdown(self, timeout: float) -> None:
        """Drain (see begin_drain), then stop the engine thread."""
        self.begin_drain(timeout)
        while self.num_active and self._thread.is_alive():
            await asyncio.sleep(0.05)
        self._send("stop")
        if self._thread.ident is not None:  # started at all (a failed app startup never starts it)
            await asyncio.to_thread(self._thread.join)

    def _send(self, *cmd) -> None:
        self._cmds.put(cmd)

    def _release_queued(self, n: int = 1) -> None:
        with self._lock:
            self._queued -= n

    # ---- engine thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._handle_commands(block=not self.engine.has_unfinished_requests()):
                if self._draining_until is not None and time.monotonic() >= self._draining_until and self._subs:
                    log.warning("shutdown: ending %d unfinished request(s)", len(self._subs))
                    self._abort(list(self._subs), notify=True)
                if self.engine.has_unfinished_requests():
                    self._step()
                self._publish_stats()
        except Exception as e:  # the engine broke: fail every open request rather than hang it
            log.exception("engine loop died")
            self._dead = f"{type(e).__name__}: {e}"
        finally:
            self._dead = self._dead or "stopped"
            self._fail_all(EngineUnavailable(self.status))

    def _fail_all(self, error: EngineUnavailable) -> None:
        """End every open request and every command still queued, so no handler waits forever."""
        for sub in self._subs.values():
            sub.stream._deliver(error)
        self._subs.clear()
        while (cmd := self._next_command()) is not None:
            if cmd[0] == "add":
                cmd[1]._resolve(error)
        with self._lock:
            self._queued = 0

    def _handle_commands(self, block: bool) -> bool:
        """Apply queued commands in order (sleeping until one comes if idle); False once told to stop."""
        cmd = self._cmds.get() if block else self._next_command()
        while cmd is not None:
            if cmd[0] == "add":
                self._add(*cmd[1:])
            elif cmd[0] == "abort":
                self._abort([rid for rid in cmd[1].request_ids if rid in self._subs], notify=False)
            elif cmd[0] == "stop":
                self._abort(list(self._subs), notify=True)
                return False
            cmd = self._next_command()
        return True

    def _next_command(self) -> tuple | None:
        try:
            return self._cmds.get_nowait()
        except queue.Empty:
            return None

    def _add(self, stream: RequestStream, prompts: list[list[int]], params: list) -> None:
        added: list[str] = []
        try:
            for i, (rid, prompt, p) in enumerate(zip(stream.request_ids, prompts, params)):
                self.engine.add_request(rid, prompt, p)
                added.append(rid)
                self._subs[rid] = _Sub(stream, i, len(prompt))
        except Exception as e:  # refused (ValueError) or broke on this request: the caller gets the error, not all
            self._abort(added, notify=False)
            self._release_queued(len(prompts) - len(added))
            stream._resolve(e)
            return
        if self.metrics:
            self.metrics.prompt_tokens.inc(sum(map(len, prompts)))
        stream._resolve(None)

    def _abort(self, rids: list[str], notify: bool) -> None:
        for rid in rids:
            self.engine.abort_request(rid)
            sub = self._subs.pop(rid)
            self._release_queued(int(sub.num_generated == 0))
            if self.metrics:
                self.metrics.finished.labels(finish_reason="abort").inc()
            if notify:
                sub.stream._deliver(Delta(sub.index, "", True, "abort", sub.num_prompt_tokens, sub.num_generated))

    def _step(self) -> None:
        t0 = time.perf_counter()
        outputs = self.engine.step()
        now = time.perf_counter()
        m = self.metrics
        if m:
            m.iteration_seconds.observe(now - t0)
        for out in outputs:
            sub = self._subs.get(out.request_id)
            if sub is None:  # aborted while this step ran
                continue
            new_ids = list(out.new_token_ids)
            if sub.num_generated == 0 and new_ids:
                self._release_queued()
                if m:
                    m.ttft_seconds.observe(now - sub.admitted_at)
            sub.num_generated += len(new_ids)
            if m:
                m.generation_tokens.inc(len(new_ids))
            if out.finished:
                del self._subs[out.request_id]
                if sub.num_generated == 0:
                    self._release_queued()
                if m:
                    m.finished.labels(finish_reason=out.finish_reason or "stop").inc()
                    m.e2e_seconds.observe(now - sub.admitted_at)
            sub.stream._deliver(Delta(sub.index, out.new_text or "", out.finished, out.finish_reason,
                                      sub.num_prompt_tokens, sub.num_generated))

    def _publish_stats(self) -> None:
        stats = dict(self.engine.stats())
        with self._lock:
            self._stats = stats
