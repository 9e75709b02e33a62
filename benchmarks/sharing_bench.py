"""Safe sharing costs, each beside its baseline measured in the same run.

    .venv/bin/python benchmarks/sharing_bench.py

1. ``bucket.increment`` against a plain write ``bucket[k] = v`` of the same
   key (target: at most 1.2x).
2. An uncontended ``bucket.transact`` read-modify-write on cached data
   against a plain write (target: at most 1.3x): the read is a cache hit, the
   commit one request.
3. Throughput of 8 client processes incrementing one key against 8 writing
   8 different keys, on a server with 2 workers (for context: the one key
   serialises the increments, the 8 keys need not).

Medians of several rounds; each round times the two sides back to back.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from typing import Any

from timing import side_by_side

from kvpio_mapping import KVBucket, Transaction
from kvpio_mapping.testing import run_server

CLIENTS = 8
PER_CLIENT = 300


def row(
    name: str, ours: float, base: float, unit: str, baseline: str, target: str, met: bool
) -> None:
    print(
        f"{name:<36} {ours:>10.1f} {unit:<5} {baseline:<30} {base:>10.1f} {unit:<5}"
        f" {ours / base:>6.2f}x  {target:<8} {'met' if met else 'NOT MET'}"
    )


def bench_single_client(url: str, api_key: str) -> None:
    print("\none client, 1 worker (microseconds per call)")
    bucket = KVBucket(url, api_key)
    bucket["n"] = 0
    bucket["balance"] = 0

    def plain_write() -> None:
        bucket["n"] = 1

    def increment() -> None:
        bucket.increment("balance")

    def add_one(tx: Transaction) -> None:
        tx["balance"] = tx["balance"] + 1

    def transact() -> None:
        bucket.transact(add_one)

    number = 300
    ours, base = side_by_side(increment, plain_write, number)
    row("increment", ours * 1e6, base * 1e6, "us", "bucket[k] = v", "<= 1.2x", ours <= 1.2 * base)
    ours, base = side_by_side(transact, plain_write, number)
    row(
        "transact, uncontended, cached",
        ours * 1e6,
        base * 1e6,
        "us",
        "bucket[k] = v",
        "<= 1.3x",
        ours <= 1.3 * base,
    )
    bucket.close()


def _client(bucket: KVBucket, key: str, increment: bool, start: Any, done: Any) -> None:
    start.wait()
    began = time.perf_counter()
    for n in range(PER_CLIENT):
        if increment:
            bucket.increment(key)
        else:
            bucket[key] = n
    done.put(time.perf_counter() - began)


def throughput(bucket: KVBucket, one_key: bool) -> float:
    """Operations per second of ``CLIENTS`` processes, each ``PER_CLIENT`` operations."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    done = context.Queue()
    processes = [
        context.Process(
            target=_client, args=(bucket, "shared" if one_key else f"own{n}", one_key, start, done)
        )
        for n in range(CLIENTS)
    ]
    for process in processes:
        process.start()
    time.sleep(1.0)  # let every client import and connect
    began = time.perf_counter()
    start.set()
    for process in processes:
        process.join(300)
    elapsed = time.perf_counter() - began
    return CLIENTS * PER_CLIENT / elapsed


def bench_contention(url: str, api_key: str) -> None:
    print(f"\n{CLIENTS} client processes x {PER_CLIENT} operations, 2 workers (operations/s)")
    bucket = KVBucket(url, api_key)
    ours_runs, base_runs = [], []
    for _ in range(3):
        bucket.pop("shared", None)
        ours_runs.append(throughput(bucket, one_key=True))
        base_runs.append(throughput(bucket, one_key=False))
    assert bucket["shared"] == CLIENTS * PER_CLIENT, "an increment was lost"
    ours, base = statistics.median(ours_runs), statistics.median(base_runs)
    row(
        "8 clients increment one key",
        ours,
        base,
        "op/s",
        "8 clients write 8 keys",
        "(context)",
        True,
    )


def main() -> int:
    with run_server(workers=1) as one:
        bench_single_client(one.url, one.api_key)
    with run_server(workers=2) as two:
        bench_contention(two.url, two.api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
