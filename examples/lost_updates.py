"""Four processes add 1 to a shared counter 200 times each, four ways.

    kvpio serve &                      # or set KVPIO_URL and KVPIO_APIKEY
    python examples/lost_updates.py

The naive read-then-write loses updates; ``increment``, ``transact`` and a
``set_if`` loop lose none.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable

from kvpio_mapping import KVBucket, Transaction

PROCESSES = 4
TIMES = 200


def naive(bucket: KVBucket) -> None:
    bucket["n"] = bucket["n"] + 1


def increment(bucket: KVBucket) -> None:
    bucket.increment("n")


def add_one(tx: Transaction) -> None:
    tx["n"] = tx["n"] + 1


def transact(bucket: KVBucket) -> None:
    bucket.transact(add_one)


def set_if(bucket: KVBucket) -> None:
    while True:
        current = bucket.versioned("n")
        if bucket.set_if("n", current.value + 1, current.etag):
            return


def worker(way: Callable[[KVBucket], None], bucket: KVBucket) -> None:
    for _ in range(TIMES):
        way(bucket)


def main() -> int:
    bucket = KVBucket()
    context = multiprocessing.get_context("spawn")
    for way in (naive, increment, transact, set_if):
        bucket["n"] = 0
        processes = [context.Process(target=worker, args=(way, bucket)) for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        total = bucket["n"]
        lost = PROCESSES * TIMES - total
        print(f"{way.__name__:<10} n = {total:>3} of {PROCESSES * TIMES}: {lost} updates lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
