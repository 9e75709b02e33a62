"""Client costs, each beside its baselines measured in the same run.

    .venv/bin/python benchmarks/client_bench.py

1. A cache hit against a ``cachetools.TTLCache`` hit guarded by a lock, plus
   the same copy of the value a hit hands out (target: at most 1.3x).
2. A miss and a write against a default ``requests.Session().get/.post`` of
   the same URL on the same local server (target: at most 0.5x); for
   context, ``http.client`` on a kept-alive connection (the floor for HTTP/1.1
   from Python), ``httpx.Client`` when installed, and the CPU time of this
   process per call beside ``requests``' (the client's own work, which a busy
   machine's waits for a core leave out).
3. ``update()`` of 1,000 keys against one ``requests.Session().post`` of the
   same JSON body, already encoded (both are one request).
4. ``dict(bucket)`` of 1,000 and 100,000 top-level keys (more than the
   cache holds) against ``bucket.copy()`` of the same bucket (target: at most
   1.2x; both are one request).
5. A write's cache invalidation on a full default-size cache (1,024 paths)
   against the same on a cache of 10 paths (target: at most 1.2x): finding
   what a write forgets costs in proportion to what is found.
6. For scale, a ``pottery.RedisDict`` get against a local Redis, when
   ``redis-server`` and ``pottery`` are installed (target: a hit 50x faster).

Medians of several rounds; each round times every side in turn. The machine's
load average is printed first: read the ratios, not the absolute times.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from cachetools import TTLCache
from timing import ROUNDS, load, side_by_side, timed

from kvpio_mapping import KVBucket, values
from kvpio_mapping.cache import PathCache
from kvpio_mapping.testing import run_server

try:
    import httpx
except ImportError:
    httpx = None


def row(name: str, ours: float, base: float, baseline: str, target: str, met: bool) -> None:
    ratio = ours / base
    print(
        f"{name:<34} {ours * 1e6:>10.3f} us  {baseline:<30} {base * 1e6:>10.3f} us"
        f"  {ratio:>7.2f}x  {target:<10} {'met' if met else 'NOT MET'}"
    )


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'operation':<34} {'ours':>13}  {'baseline':<30} {'':>13}  {'ratio':>8}  target")


def bench_hits(bucket: KVBucket) -> None:
    header("cache hits (in process)")
    small = {"name": "ada", "age": 36, "admin": True}
    bucket["scalar"] = 42
    bucket["small"] = small
    assert bucket["scalar"] == 42 and bucket["small"]["age"] == 36  # warms the cache
    lock = threading.Lock()
    ttl: TTLCache[str, Any] = TTLCache(1024, 60)
    ttl["scalar"] = 42
    ttl["small"] = small
    plain = {"scalar": 42}

    def locked_hit() -> Any:
        with lock:
            return ttl["scalar"]

    def locked_hit_copied() -> Any:
        with lock:
            found = ttl["small"]
        return values.copy(found)

    number = 200_000
    ours, base = side_by_side(lambda: bucket["scalar"], locked_hit, number)
    row("hit, scalar", ours, base, "TTLCache hit + lock", "<= 1.3x", ours <= 1.3 * base)
    ours, base = side_by_side(lambda: bucket["small"], locked_hit_copied, number)
    met = ours <= 1.3 * base
    row("hit, 3-field dict (copied)", ours, base, "TTLCache hit + lock + copy", "<= 1.3x", met)
    ours, base = side_by_side(lambda: bucket["scalar"], lambda: plain["scalar"], number)
    row("hit, scalar", ours, base, "dict lookup", "(context)", True)


def filled(size: int) -> PathCache:
    """A default-size cache holding ``size`` paths ``k{i}/a``."""
    cache = PathCache(60, 1024)
    cache.store_many(((f"k{i}/a", i) for i in range(size)), cache.generation)
    return cache


def bench_invalidate() -> None:
    header("a write's cache invalidation (in process)")
    full, small = filled(1024), filled(10)

    def forget(cache: PathCache) -> Callable[[], None]:
        """A write's invalidation of ``k5``, then ``k5/a`` stored again to keep the size."""

        def call() -> None:
            cache.invalidate("k5")
            cache.store("k5/a", 5, cache.generation)

        return call

    ours, base = side_by_side(forget(full), forget(small), 20_000)
    met = ours <= 1.2 * base
    row("invalidate, 1,024 paths cached", ours, base, "the same, 10 paths cached", "<= 1.2x", met)


def keep_alive(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None):
    """One call on a kept-alive ``http.client`` connection, reading the whole answer;
    the connection opens at the first call (an idle one the server closed opens again)."""
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port)

    def call() -> bytes:
        try:
            connection.request(method, path, body=body, headers=headers)
            return connection.getresponse().read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            connection.close()
            connection.request(method, path, body=body, headers=headers)
            return connection.getresponse().read()

    return call


def compare(name: str, ours: Callable[[], Any], bases: dict[str, Callable[[], Any]]) -> None:
    """One row per baseline; the first is the target's (at most 0.5x), the rest context;
    then the first again in this process's CPU time (the client's own work)."""
    medians = timed({"ours": ours, **bases}, 300)
    mine = medians["ours"][0]
    for index, baseline in enumerate(bases):
        base = medians[baseline][0]
        if index == 0:
            row(name, mine, base, baseline, "<= 0.5x", mine <= 0.5 * base)
        else:
            row(name, mine, base, baseline, "(context)", True)
    first = next(iter(bases))
    cpu, base_cpu = medians["ours"][1], medians[first][1]
    row(f"{name}, client CPU", cpu, base_cpu, first, "(context)", True)


def bench_round_trips(url: str, api_key: str, label: str) -> None:
    header(f"round trips against the local server, {label}")
    bucket = KVBucket(url, api_key, ttl=0)
    bucket["k"] = {"a": 1, "b": [1, 2, 3]}
    session = requests.Session()
    target = f"{url}/v1/bucket/k"
    auth = (api_key, "")
    body = b'{"a":1,"b":[1,2,3]}'
    json_type = {"Content-Type": "application/json"}
    assert session.get(target, auth=auth).json() == bucket["k"]
    basic = {"Authorization": "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()}
    client = httpx.Client(auth=auth) if httpx is not None else None

    def ours_write() -> None:
        bucket["k"] = {"a": 1, "b": [1, 2, 3]}

    reads: dict[str, Callable[[], Any]] = {
        "requests.Session().get": lambda: session.get(target, auth=auth).content,
        "http.client keep-alive GET": keep_alive(url, "GET", "/v1/bucket/k", basic, None),
    }
    writes: dict[str, Callable[[], Any]] = {
        "requests.Session().post": lambda: (
            session.post(target, data=body, auth=auth, headers=json_type).content
        ),
        "http.client keep-alive POST": keep_alive(
            url, "POST", "/v1/bucket/k", basic | json_type, body
        ),
    }
    if client is not None:
        reads["httpx.Client().get"] = lambda: client.get(target).content
        writes["httpx.Client().post"] = lambda: (
            client.post(target, content=body, headers=json_type).content
        )
    compare("miss (GET)", lambda: bucket["k"], reads)
    compare("write (POST)", ours_write, writes)
    bucket.close()
    session.close()
    if client is not None:
        client.close()


def bench_update(url: str, api_key: str) -> None:
    header("a batch write of 1,000 keys, 1 worker")
    bucket = KVBucket(url, api_key)
    bucket.clear()
    batch = {f"k{i:04d}": {"n": i, "tags": ["a", "b"]} for i in range(1000)}
    session = requests.Session()
    body = values.dump(batch).encode()
    auth = (api_key, "")

    def base_post() -> Any:
        return session.post(
            f"{url}/v1/bucket/", data=body, auth=auth, headers={"Content-Type": "application/json"}
        ).content

    bucket.update(batch)
    base_post()
    assert dict(bucket) == batch
    ours, base = side_by_side(lambda: bucket.update(batch), base_post, 10)
    met = ours <= 1.2 * base
    row("update() of 1,000 keys", ours, base, "requests post of the body", "<= 1.2x", met)
    bucket.clear()
    bucket.close()
    session.close()


def bench_whole_reads(url: str, api_key: str) -> None:
    header("whole-bucket reads, default cache (1,024 paths)")
    bucket = KVBucket(url, api_key)
    for size, number, rounds in ((1_000, 20, ROUNDS), (100_000, 1, 5)):
        bucket.clear()
        bucket.update({f"k{i}": {"n": i, "tags": ["a", "b"]} for i in range(size)})
        assert dict(bucket) == bucket.copy()
        ours, base = side_by_side(lambda: dict(bucket), bucket.copy, number, rounds)
        met = ours <= 1.2 * base
        row(f"dict(bucket), {size:,} keys", ours, base, "bucket.copy()", "<= 1.2x", met)
    bucket.clear()
    bucket.close()


def bench_redis(bucket: KVBucket) -> None:
    header("for scale: a cache hit against pottery.RedisDict over a local Redis")
    server = shutil.which("redis-server")
    try:
        import pottery
        import redis
    except ImportError:
        pottery = None
    if server is None or pottery is None:
        print("not run: needs redis-server and the pottery package (reference figure: 126 us)")
        return
    port = 6390
    process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(50):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        remote = pottery.RedisDict(redis=client, key="bench")
        remote["scalar"] = 42
        ours, base = side_by_side(lambda: bucket["scalar"], lambda: remote["scalar"], 2000)
        row("hit, scalar", ours, base, "RedisDict get", "<= 1/50x", ours * 50 <= base)
    finally:
        process.terminate()
        process.wait()


def main() -> int:
    print(load())
    bench_invalidate()
    with run_server(workers=1) as one:
        bucket = KVBucket(one.url, one.api_key, ttl=3600)
        bench_hits(bucket)
        bench_round_trips(one.url, one.api_key, "1 worker")
        bench_update(one.url, one.api_key)
        bench_whole_reads(one.url, one.api_key)
        bench_redis(bucket)
    with run_server(workers=2) as two:
        bench_round_trips(two.url, two.api_key, "2 workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
