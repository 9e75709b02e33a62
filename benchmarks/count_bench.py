"""``len()`` and ``bool()`` of a bucket, each beside a small GET miss measured in the same run.

    .venv/bin/python benchmarks/count_bench.py

Against a local server with one worker, at 1,000 and 100,000 top-level keys
(and a view over an object of as many members), uncached (``ttl=0``, so
every call asks the server): ``len(bucket)``, ``bool(bucket)`` and
``len(bucket.view(path))`` against ``bucket.get("absent")``, a miss answered
by an empty body (target: at most 1.5x at both sizes). For context, the way
``len`` worked before counts: downloading the key listing.

Medians of several rounds; each round times the two sides back to back.
"""

from __future__ import annotations

import sys
from typing import Any

from timing import ROUNDS, side_by_side

from kvpio_mapping import KVBucket
from kvpio_mapping.testing import run_server

TARGET = 1.5


def row(name: str, ours: float, base: float, baseline: str, target: str, met: bool) -> None:
    print(
        f"{name:<36} {ours * 1e6:>11.1f} us  {baseline:<26} {base * 1e6:>11.1f} us"
        f"  {ours / base:>8.2f}x  {target:<8} {'met' if met else 'NOT MET'}"
    )


def main() -> int:
    print(f"{'operation':<36} {'ours':>14}  {'baseline':<26} {'':>14}  {'ratio':>9}  target")
    with run_server(workers=1) as server:
        bucket = KVBucket(server.url, server.api_key, ttl=0)
        for size in (1_000, 100_000):
            bucket.clear()
            bucket.update({f"k{i}": {"n": i} for i in range(size)})
            bucket["view"] = {f"m{i}": i for i in range(size)}
            view = bucket.view("view")
            assert len(bucket) == size + 1 and bucket and len(view) == size
            assert bucket.get("absent") is None

            def miss() -> Any:
                return bucket.get("absent")

            def view_length(view: KVBucket = view) -> int:
                return len(view)

            number = 300
            for name, ours_call in (
                (f"len(bucket), {size:,} keys", lambda: len(bucket)),
                (f"bool(bucket), {size:,} keys", lambda: bool(bucket)),
                (f"len(view), {size:,} members", view_length),
            ):
                ours, base = side_by_side(ours_call, miss, number)
                met = ours <= TARGET * base
                row(name, ours, base, 'bucket.get("absent")', f"<= {TARGET}x", met)
            listing, base = side_by_side(
                lambda: len(bucket._keys()), miss, max(1, 30_000 // size), min(ROUNDS, 5)
            )
            row(
                f"before: key listing, {size:,} keys",
                listing,
                base,
                'bucket.get("absent")',
                "",
                True,
            )
        bucket.clear()
        bucket.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
