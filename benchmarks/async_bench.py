"""The asyncio client's costs, each beside its baseline measured in the same run.

    .venv/bin/python benchmarks/async_bench.py

1. A miss of ``AsyncKVBucket`` against a plain ``httpx.AsyncClient`` call of
   the same URL on the same local server (target: at most 1.1x), and a write
   for context.
2. 100 concurrent misses (``asyncio.gather``) against the blocking
   ``KVBucket`` doing the same 100 misses in sequence: on one that answers
   20 ms late, as a distant server does (target: at least 5x faster), and on
   the local server (context: on loopback nothing is waited for, so the cost
   is the client's own work, and httpx's per-request work is larger than
   that of the blocking client's tuned ``requests`` path).

Medians of several rounds; each round times the two sides back to back.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from client_bench import header, row

from kvpio_mapping import AsyncKVBucket, KVBucket
from kvpio_mapping.testing import run_server

ROUNDS = 7
DELAY = 0.02


class _Late(BaseHTTPRequestHandler):
    """Answers every request with the value ``1``, ``DELAY`` seconds late."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        time.sleep(DELAY)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1")
        self.end_headers()
        self.wfile.write(b"1")


class _LateServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


@contextmanager
def distant_server() -> Iterator[str]:
    """The URL of a loopback server that answers as one ``DELAY`` seconds away would."""
    server = _LateServer(("127.0.0.1", 0), _Late)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def per_call(fn: Callable[[], Awaitable[Any]], number: int) -> float:
    """Seconds per call of ``fn``, over ``number`` awaited calls."""
    start = time.perf_counter()
    for _ in range(number):
        await fn()
    return (time.perf_counter() - start) / number


async def side_by_side(
    ours: Callable[[], Awaitable[Any]], base: Callable[[], Awaitable[Any]], number: int
) -> tuple[float, float]:
    """Median seconds per call of each, timed alternately over ROUNDS rounds."""
    ours_times, base_times = [], []
    for _ in range(ROUNDS):
        ours_times.append(await per_call(ours, number))
        base_times.append(await per_call(base, number))
    return statistics.median(ours_times), statistics.median(base_times)


async def bench_round_trips(url: str, api_key: str) -> None:
    header("round trips against the local server, 1 worker")
    async with AsyncKVBucket(url, api_key, ttl=0) as bucket, httpx.AsyncClient() as client:
        value = {"a": 1, "b": [1, 2, 3]}
        await bucket.set("k", value)
        target = f"{url}/v1/bucket/k"
        auth = (api_key, "")
        body = b'{"a":1,"b":[1,2,3]}'
        assert (await client.get(target, auth=auth)).json() == await bucket.get("k")

        async def base_get() -> Any:
            return (await client.get(target, auth=auth)).content

        async def base_post() -> Any:
            headers = {"Content-Type": "application/json"}
            return (await client.post(target, content=body, auth=auth, headers=headers)).content

        number = 300
        ours, base = await side_by_side(lambda: bucket.get("k"), base_get, number)
        row("miss (GET)", ours, base, "httpx.AsyncClient().get", "<= 1.1x", ours <= 1.1 * base)
        ours, base = await side_by_side(lambda: bucket.set("k", value), base_post, number)
        row("write (POST)", ours, base, "httpx.AsyncClient().post", "(context)", True)


async def concurrent_misses(bucket: AsyncKVBucket) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(bucket.get(f"k{n}") for n in range(100)))
    return time.perf_counter() - start


def sequential_misses(bucket: KVBucket) -> float:
    start = time.perf_counter()
    for n in range(100):
        bucket.get(f"k{n}")
    return time.perf_counter() - start


async def bench_concurrency(url: str, api_key: str, label: str, target: str) -> None:
    async with AsyncKVBucket(url, api_key, ttl=0) as ours:
        with KVBucket(url, api_key, ttl=0) as theirs:
            if label == "local":
                await ours.update({f"k{n}": n for n in range(100)})
            await concurrent_misses(ours)  # opens the pool's connections
            ours_times, base_times = [], []
            for _ in range(ROUNDS):
                ours_times.append(await concurrent_misses(ours))
                base_times.append(sequential_misses(theirs))
    ours_median, base_median = statistics.median(ours_times), statistics.median(base_times)
    met = target == "(context)" or ours_median * 5 <= base_median
    label = f"{label} (ours concurrent)"
    row(f"100 misses, {label}", ours_median, base_median, "KVBucket, in sequence", target, met)


def main() -> int:
    with run_server(workers=1) as one:
        asyncio.run(bench_round_trips(one.url, one.api_key))
        header("100 concurrent misses (whole batch)")
        asyncio.run(bench_concurrency(one.url, one.api_key, "local", "(context)"))
    with distant_server() as url:
        asyncio.run(bench_concurrency(url, "key", f"{DELAY * 1000:g} ms away", ">= 5x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
