"""Prometheus metrics for `/metrics`: request counts by status, token counters, engine gauges, latency histograms.

Each app owns its own `CollectorRegistry` (not prometheus' global one), so two servers in one process (tests) never
share or clash on metric names. Engine gauges are read from the engine loop's latest stats snapshot at scrape time,
so a scrape never touches the engine from the HTTP thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Gauge name, help, key in the engine's stats() snapshot.
_ENGINE_GAUGES = (
    ("nanoflow_num_requests_waiting", "Requests waiting in the engine for their (re)prefill.", "num_waiting"),
    ("nanoflow_num_requests_running", "Requests in the engine's running batch.", "num_running"),
    ("nanoflow_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", "kv_usage"),
    ("nanoflow_kv_free_blocks", "Free KV-cache blocks.", "num_free_blocks"),
    ("nanoflow_kv_total_blocks", "KV-cache blocks in total.", "num_total_blocks"),
    ("nanoflow_queue_depth", "Requests admitted by the server that have no token yet (the --max-queued measure).",
     "queue_depth"),
)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineStatsCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict]):
        self._snapshot = snapshot

    def collect(self) -> Iterable:
        stats = self._snapshot()
        for name, doc, key in _ENGINE_GAUGES:
            if key in stats:
                yield GaugeMetricFamily(name, doc, value=float(stats[key]))
        if "num_preemptions" in stats:
            yield CounterMetricFamily("nanoflow_num_preemptions", "Requests preempted for lack of KV blocks.",
                                      value=float(stats["num_preemptions"]))


class ServerMetrics:
    """All metrics of one server; the engine loop and the routes record into it, `/metrics` renders it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nanoflow_requests", "API requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.finished = Counter("nanoflow_request_finished", "Generations finished, by finish reason.",
                                ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("nanoflow_prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter("nanoflow_generation_tokens", "Tokens generated.", registry=r)
        self.iteration_seconds = Histogram("nanoflow_iteration_seconds", "Wall time of one engine step.",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft_seconds = Histogram("nanoflow_time_to_first_token_seconds", "Admission to first token.",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e_seconds = Histogram("nanoflow_request_latency_seconds", "Admission to last token.",
                                     buckets=_LATENCY_BUCKETS, registry=r)

    def track_engine(self, snapshot: Callable[[], dict]) -> None:
        """Export the engine gauges from `snapshot()` (the engine loop's latest stats) at every scrape."""
        self.registry.register(_EngineStatsCollector(snapshot))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestCounterMiddleware:
    """Counts every `/v1/` request by route and final status, errors included (plain ASGI: streaming-safe)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app dies before it starts a response

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = path if path in self.endpoints else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
