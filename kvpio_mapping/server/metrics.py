"""``GET /metrics``: the server's Prometheus metrics, summed over its worker processes.

:func:`~kvpio_mapping.server.serve.serve` points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh directory before any worker starts, so each worker writes its
samples to files there (prometheus_client's multiprocess mode) and whichever
worker answers ``/metrics`` reads them all. An app made in-process without
that variable serves its own process's registry.

A request pays for its own two samples (count and latency). The render pool,
the caches and the group commits keep plain integer counts on their objects; :class:`Metrics`
copies them into the metrics every :data:`SAMPLE_SECONDS`, off the hot paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from ..forks import reset_after_fork

if TYPE_CHECKING:
    import falcon.asgi

    from .app import Server

DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS: Final = 1.0


class _ProcessId:
    """This process's id, kept: prometheus_client asks for it at every sample written.

    Its default asks the system each time, a system call per sample; a forked
    child takes its own id at the fork, so its samples still go to its own file.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


if os.environ.get(DIR_ENV):
    values.ValueClass = values.MultiProcessValue(_ProcessId())  # type: ignore[no-untyped-call]
KEPT_SAMPLES: Final = 1024
"""Most (route, method, status) sample pairs a worker keeps at hand (emptied when full)."""

REQUESTS = Counter(
    "kvpio_http_requests",
    "Requests answered, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "kvpio_http_request_duration_seconds",
    "Seconds from a request's arrival to its answer, by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
STORAGE_ERRORS = Counter("kvpio_storage_errors", "Requests that failed in the database")
RENDER_QUEUE = Gauge(
    "kvpio_render_queue", "Renders waiting for a free render process", multiprocess_mode="livesum"
)
RENDER_KILLS = Counter(
    "kvpio_render_kills", "Render processes killed (over time or memory, or broken)"
)
CACHE = Counter(
    "kvpio_cache_lookups",
    "Lookups in the server's caches, by cache and hit or miss",
    ["cache", "result"],
)
COMMITS = Counter("kvpio_commits", "Bucket writes committed or refused, grouped or alone")
COMMIT_GROUPS = Counter(
    "kvpio_commit_groups", "Transactions the bucket writes took (a group commit is one)"
)
WORKERS = Gauge(
    "kvpio_worker_start_time_seconds",
    "When each serving worker process started",
    multiprocess_mode="liveall",
)


def registry() -> CollectorRegistry:
    """The registry to expose: all workers' files in multiprocess mode, else this process's."""
    if not os.environ.get(DIR_ENV):
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


class MetricsResource:
    """The Prometheus text exposition of :func:`registry`, no auth."""

    prefix = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry())


class Metrics:
    """Falcon middleware counting each request, and the sampler of pool and cache counts."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._seen: dict[str, int] = {}
        # Each route, method and status's samples: labels() is a locked lookup per call.
        self._samples: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._sampler: asyncio.Task[None] | None = None

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        WORKERS.set_to_current_time()
        self._sampler = asyncio.create_task(self._sample_forever())

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.sample()

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        route = req.uri_template or "unrouted"
        key = (route, req.method, resp.status_code)
        samples = self._samples.get(key)
        if samples is None:
            if len(self._samples) >= KEPT_SAMPLES:
                self._samples.clear()
            samples = (
                REQUESTS.labels(route, req.method, str(resp.status_code)),
                LATENCY.labels(route),
            )
            self._samples[key] = samples
        samples[0].inc()
        started = req.context.get("metrics_started")
        if started is not None:
            samples[1].observe(time.perf_counter() - started)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            self.sample()

    def sample(self) -> None:
        """Copy the render pool's, the caches' and the group commits' counts into the metrics."""
        server = self.server
        renderer = server.renderer
        if renderer is not None:
            RENDER_QUEUE.set(renderer.waiting)
            self._add("kills", renderer.killed, RENDER_KILLS)
        storage = server.storage
        self._add("auth hit", server.auth_hits, CACHE.labels("auth", "hit"))
        self._add("auth miss", server.auth_misses, CACHE.labels("auth", "miss"))
        self._add("read hit", storage.read_cache_hits, CACHE.labels("read", "hit"))
        self._add("read miss", storage.read_cache_misses, CACHE.labels("read", "miss"))
        self._add("commits", server.commits, COMMITS)
        self._add("commit groups", server.commit_groups, COMMIT_GROUPS)

    def _add(self, name: str, total: int, counter: Any) -> None:
        """Raise ``counter`` by what ``total`` grew since the last sample."""
        grown = total - self._seen.get(name, 0)
        if grown > 0:
            counter.inc(grown)
        self._seen[name] = total
