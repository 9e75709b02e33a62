"""Client costs, each beside its baseline measured in the same run.

    .venv/bin/python benchmarks/client_bench.py

1. A cache hit against a ``cachetools.TTLCache`` hit guarded by a lock
   (targets: scalar at most 3x, a 3-field dict with its copy at most 10x).
2. A miss and a write against a default ``requests.Session().get/.post`` of
   the same URL on the same local server (target: at most 0.8x).
3. ``dict(bucket)`` of 1,000 and 100,000 top-level keys (more than the
   cache holds) against ``bucket.copy()`` of the same bucket (target: at most
   1.2x; both are one request).
4. For scale, a ``pottery.RedisDict`` get against a local Redis, when
   ``redis-server`` and ``pottery`` are installed (target: a hit 50x faster).

Medians of several rounds; each round times the two sides back to back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import requests
from cachetools import TTLCache
from timing import ROUNDS, side_by_side

from kvpio_mapping import KVBucket
from kvpio_mapping.testing import run_server


def row(name: str, ours: float, base: float, baseline: str, target: str, met: bool) -> None:
    ratio = ours / base
    print(
        f"{name:<34} {ours * 1e6:>10.3f} us  {baseline:<28} {base * 1e6:>10.3f} us"
        f"  {ratio:>7.2f}x  {target:<10} {'met' if met else 'NOT MET'}"
    )


def header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'operation':<34} {'ours':>13}  {'baseline':<28} {'':>13}  {'ratio':>8}  target")


def bench_hits(bucket: KVBucket) -> None:
    header("cache hits (in process)")
    bucket["scalar"] = 42
    bucket["small"] = {"name": "ada", "age": 36, "admin": True}
    assert bucket["scalar"] == 42 and bucket["small"]["age"] == 36  # warms the cache
    lock = threading.Lock()
    ttl: TTLCache[str, Any] = TTLCache(1024, 60)
    ttl["scalar"] = 42
    plain = {"scalar": 42}

    def locked_hit() -> Any:
        with lock:
            return ttl["scalar"]

    number = 200_000
    ours, base = side_by_side(lambda: bucket["scalar"], locked_hit, number)
    row("hit, scalar", ours, base, "TTLCache hit + lock", "<= 3x", ours <= 3 * base)
    ours, base = side_by_side(lambda: bucket["small"], locked_hit, number)
    met = ours <= 10 * base
    row("hit, 3-field dict (copied)", ours, base, "TTLCache hit + lock", "<= 10x", met)
    ours, base = side_by_side(lambda: bucket["scalar"], lambda: plain["scalar"], number)
    row("hit, scalar", ours, base, "dict lookup", "(context)", True)


def bench_round_trips(url: str, api_key: str, label: str) -> None:
    header(f"round trips against the local server, {label}")
    bucket = KVBucket(url, api_key, ttl=0)
    bucket["k"] = {"a": 1, "b": [1, 2, 3]}
    session = requests.Session()
    target = f"{url}/v1/bucket/k"
    auth = (api_key, "")
    body = b'{"a":1,"b":[1,2,3]}'
    assert session.get(target, auth=auth).json() == bucket["k"]

    def base_get() -> Any:
        return session.get(target, auth=auth).content

    def base_post() -> Any:
        return session.post(
            target, data=body, auth=auth, headers={"Content-Type": "application/json"}
        ).content

    def ours_write() -> None:
        bucket["k"] = {"a": 1, "b": [1, 2, 3]}

    number = 300
    ours, base = side_by_side(lambda: bucket["k"], base_get, number)
    row("miss (GET)", ours, base, "requests.Session().get", "<= 0.8x", ours <= 0.8 * base)
    ours, base = side_by_side(ours_write, base_post, number)
    row("write (POST)", ours, base, "requests.Session().post", "<= 0.8x", ours <= 0.8 * base)
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
    with run_server(workers=1) as one:
        bucket = KVBucket(one.url, one.api_key, ttl=3600)
        bench_hits(bucket)
        bench_round_trips(one.url, one.api_key, "1 worker")
        bench_whole_reads(one.url, one.api_key)
        bench_redis(bucket)
    with run_server(workers=2) as two:
        bench_round_trips(two.url, two.api_key, "2 workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
