"""Benchmark of SQLiteStorage's hybrid layout against its targets.

Run: ``python benchmarks/storage_bench.py [--no-sweep]``. Prints medians of
repeated runs, measured side by side in one process on one database:

1. writing one leaf of a 10 MB document vs one leaf of a 1 KB document
   (target: at most 2x; the cost of a leaf write must not grow with its
   document);
2. reading a whole 1 MB document with ``get()`` vs ``json.loads`` of the same
   text plus one indexed row read (target: at most 2x);
3. writing the whole 10 MB document with ``set()`` vs ``json.dumps`` of it
   (compact) in this process (target: at most 3x), and reading it whole with
   ``get()`` vs ``json.loads`` of its text (target: at most 2x): the storage's
   share of ``read_bench.py``'s whole-document rows;

and, for context, the naive layout: the 10 MB document as one JSON row,
one leaf changed with SQLite's ``json_set``; and the shapes packed into runs
(long flat containers of tiny children): reading a list of 100,000 numbers
and an object of 50,000 small members vs ``json.loads`` of their text
(target: at most 3x), and deleting the list's second item.

It then times (1), (2) and (3) for other blob thresholds, which is how the
default threshold was chosen (``--no-sweep`` skips that).

``--postgres`` also times (1), (2), (3) and the naive whole-document write on
PostgreSQL (the server ``$KVPIO_TEST_POSTGRES`` names, else a temporary one,
as the tests start it), beside SQLite's figures from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvpio_mapping import values
from kvpio_mapping.server.storage.base import Storage
from kvpio_mapping.server.storage.sqlite import BLOB_THRESHOLD, SQLiteStorage

ACCOUNT = "bench"


def document(target: int, seed: int = 0) -> dict[str, Any]:
    """A realistic document of about ``target`` bytes: objects of objects, lists, strings."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "zeta"]
    doc: dict[str, Any] = {"meta": {"version": 7, "owner": "ops", "tags": ["a", "b"]}}
    doc["teams"] = {}
    size = len(values.encode(doc))
    t = 0
    while size < target:
        team: dict[str, Any] = {"name": f"team {t}", "members": {}, "log": []}
        doc["teams"][f"t{t}"] = team
        for m in range(rng.randint(5, 30)):
            member = {
                "name": " ".join(rng.choices(words, k=2)),
                "email": f"m{t}.{m}@example.com",
                "roles": rng.sample(words, 3),
                "profile": {
                    "bio": " ".join(rng.choices(words, k=rng.randint(5, 40))),
                    "age": rng.randint(18, 80),
                    "active": rng.random() < 0.8,
                },
                "scores": [rng.randint(0, 100) for _ in range(rng.randint(1, 8))],
            }
            team["members"][f"m{m}"] = member
            size += len(values.encode(member)) + 8
            if size >= target:
                return doc
        team["log"] = [{"at": i, "event": rng.choice(words)} for i in range(rng.randint(0, 20))]
        size += len(values.encode(team["log"])) + 20
        t += 1
    return doc


def leaves(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths of the ``age`` leaf of every member."""
    return [
        ("teams", team, "members", member, "profile", "age")
        for team, body in doc["teams"].items()
        for member in body["members"]
    ]


def leaf_value(rng: random.Random) -> int:
    """A new leaf value whose length varies, so a write is never a same-size overwrite.

    (SQLite rewrites only the changed pages of a same-size record, which would
    flatter the single-blob baseline.)
    """
    return rng.randint(0, 10 ** rng.randint(1, 6))


def median_ms(func: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def paired(
    first: Callable[[], object], second: Callable[[], object], runs: int
) -> tuple[float, float]:
    """Medians (ms) of two operations run alternately, so drift hits both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        for func, into in ((first, a), (second, b)):
            start = time.perf_counter()
            func()
            into.append(time.perf_counter() - start)
    return statistics.median(a) * 1000, statistics.median(b) * 1000


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def wal_per_write(
    conn: sqlite3.Connection, wal: str, write: Callable[[], object], count: int
) -> float:
    """Bytes of write-ahead log one ``write`` appends (checkpoints held off meanwhile)."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(count):
        write()
    grown = os.path.getsize(wal) / count
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    return grown


WHOLE_RUNS: Final = 5
"""Whole writes and reads of the 10 MB document per measurement."""
COMPACT: Final = (",", ":")


def whole(storage: Storage, doc: Any, runs: int) -> dict[str, float]:
    """Medians (ms) of (3): ``doc`` set and got whole, beside ``json.dumps`` and ``json.loads``."""
    text = json.dumps(doc, separators=COMPACT)
    write_ms, dumps_ms = paired(
        lambda: storage.set(ACCOUNT, ("whole",), doc),
        lambda: json.dumps(doc, separators=COMPACT),
        runs,
    )
    read_ms, loads_ms = paired(
        lambda: storage.get(ACCOUNT, ("whole",)), lambda: json.loads(text), runs
    )
    storage.delete(ACCOUNT, ("whole",))
    return {"whole_write": write_ms, "dumps": dumps_ms, "whole_read": read_ms, "loads": loads_ms}


def measure(
    folder: str,
    threshold: int,
    docs: dict[str, Any],
    runs: int,
    read_baseline: Callable[[], object],
    whole_runs: int = WHOLE_RUNS,
) -> dict[str, float]:
    """Time the hybrid storage's leaf writes and whole reads and writes at one threshold.

    Each is timed alternately with its baseline, so load from other processes
    weighs on both sides alike.
    """
    db = os.path.join(folder, f"hybrid-{threshold}.sqlite3")
    storage = SQLiteStorage(db, blob_threshold=threshold)
    storage.create_account(ACCOUNT, "", f"key-{threshold}")
    for name, doc in docs.items():
        storage.set(ACCOUNT, (name,), doc)
    rng = random.Random(1)
    big_leaves = [("big", *path) for path in leaves(docs["big"])]
    small_leaves = [("small", *path) for path in leaves(docs["small"])]

    def write_big() -> None:
        storage.set(ACCOUNT, rng.choice(big_leaves), leaf_value(rng))

    def write_small() -> None:
        storage.set(ACCOUNT, rng.choice(small_leaves), leaf_value(rng))

    for _ in range(20):  # warm the page cache and the connection
        write_big()
        write_small()
    big_ms, small_ms = paired(write_big, write_small, runs)
    read_ms, read_base_ms = paired(
        lambda: storage.get(ACCOUNT, ("mid",)), read_baseline, max(runs // 10, 15)
    )
    conn = storage._conn()
    rows = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
    wal = wal_per_write(conn, db + "-wal", write_big, 50)
    wholes = whole(storage, docs["big"], whole_runs)
    storage.close()
    return {
        **wholes,
        "big": big_ms,
        "small": small_ms,
        "read": read_ms,
        "read_base": read_base_ms,
        "rows": rows,
        "wal": wal,
    }


def measure_postgres(docs: dict[str, Any], runs: int) -> dict[str, float]:
    """(1), (2) and the naive write of the 10 MB document, on a fresh PostgreSQL database."""
    import psycopg

    from kvpio_mapping.server.storage.postgres import PostgresStorage
    from kvpio_mapping.testing import run_postgres

    with run_postgres() as server:
        url = server.create_database()
        storage = PostgresStorage(url)
        conn = psycopg.connect(url, autocommit=True)
        try:
            storage.create_account(ACCOUNT, "", "key")
            for name, doc in docs.items():
                storage.set(ACCOUNT, (name,), doc)
            conn.execute("CREATE TABLE docs (k TEXT PRIMARY KEY, body JSONB NOT NULL)")
            for name, doc in docs.items():
                conn.execute("INSERT INTO docs VALUES (%s, %s)", (name, values.dump(doc)))
            rng = random.Random(1)
            big_paths = leaves(docs["big"])
            big_leaves = [("big", *path) for path in big_paths]
            small_leaves = [("small", *path) for path in leaves(docs["small"])]

            def write_big() -> None:
                storage.set(ACCOUNT, rng.choice(big_leaves), leaf_value(rng))

            def write_small() -> None:
                storage.set(ACCOUNT, rng.choice(small_leaves), leaf_value(rng))

            def read_baseline() -> object:
                row = conn.execute("SELECT body::text FROM docs WHERE k = 'mid'").fetchone()
                assert row is not None
                return json.loads(row[0])

            def naive_write() -> None:
                conn.execute(
                    "UPDATE docs SET body = jsonb_set(body, %s, %s) WHERE k = 'big'",
                    (list(rng.choice(big_paths)), json.dumps(leaf_value(rng))),
                )

            for _ in range(20):
                write_big()
                write_small()
            big_ms, small_ms = paired(write_big, write_small, runs)
            read_ms, read_base_ms = paired(
                lambda: storage.get(ACCOUNT, ("mid",)), read_baseline, max(runs // 10, 15)
            )
            naive_ms = median_ms(naive_write, 15)
            wholes = whole(storage, docs["big"], WHOLE_RUNS)
        finally:
            conn.close()
            storage.close()
            server.drop_database(url)
    return {
        **wholes,
        "big": big_ms,
        "small": small_ms,
        "read": read_ms,
        "read_base": read_base_ms,
        "naive": naive_ms,
    }


FLAT_ITEMS: Final = 100_000
FLAT_MEMBERS: Final = 50_000


def flat_reads(folder: str, conn: sqlite3.Connection) -> dict[str, tuple[float, float]]:
    """Medians (ms) for long flat containers of tiny children, stored as runs.

    Reading a list of numbers and an object of small members whole, each vs
    ``json.loads`` of its text from a row; and deleting the list's second
    item (the later items move up) vs overwriting its last one.
    """
    shapes: dict[str, Any] = {
        "flat": list(range(FLAT_ITEMS)),
        "members": {f"key{i}": i for i in range(FLAT_MEMBERS)},
    }
    storage = SQLiteStorage(os.path.join(folder, "flat.sqlite3"))
    storage.create_account(ACCOUNT, "", "flat-key")
    results: dict[str, tuple[float, float]] = {}
    for name, value in shapes.items():
        storage.set(ACCOUNT, (name,), value)
        conn.execute("INSERT INTO docs VALUES (?, ?)", (name, values.encode(value).decode()))

        def baseline(name: str = name) -> object:
            return json.loads(
                conn.execute("SELECT body FROM docs WHERE k = ?", (name,)).fetchone()[0]
            )

        def read(name: str = name) -> object:
            return storage.get(ACCOUNT, (name,))

        results[name] = paired(read, baseline, 9)
    rng = random.Random(3)
    last = ("flat", str(FLAT_ITEMS))

    def delete_early() -> None:
        storage.delete(ACCOUNT, ("flat", "2"))
        storage.set(ACCOUNT, ("flat", str(FLAT_ITEMS)), 0)  # keep the length

    results["delete"] = paired(delete_early, lambda: storage.set(ACCOUNT, last, leaf_value(rng)), 9)
    storage.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="leaf writes per measurement")
    parser.add_argument(
        "--no-sweep", action="store_true", help="skip timing the other blob thresholds"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="also time PostgreSQL beside SQLite"
    )
    args = parser.parse_args()

    docs = {
        "big": document(10_000_000, seed=1),
        "mid": document(1_000_000, seed=2),
        "small": document(1_000, seed=3),
    }
    sizes = {name: len(values.encode(doc)) for name, doc in docs.items()}
    print("documents: " + ", ".join(f"{name} {size / 1e6:.3f} MB" for name, size in sizes.items()))

    with tempfile.TemporaryDirectory() as folder:
        # Baselines: each document as one JSON text row of a plain keyed table.
        conn = connect(os.path.join(folder, "blob.sqlite3"))
        conn.execute("CREATE TABLE docs (k TEXT PRIMARY KEY, body TEXT NOT NULL)")
        for name, doc in docs.items():
            conn.execute("INSERT INTO docs VALUES (?, ?)", (name, values.encode(doc).decode()))
        big_paths = leaves(docs["big"])
        rng = random.Random(2)

        def read_baseline() -> object:
            text = conn.execute("SELECT body FROM docs WHERE k = ?", ("mid",)).fetchone()[0]
            return json.loads(text)

        def naive_write() -> None:
            path = rng.choice(big_paths)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE docs SET body = json_set(body, ?, ?) WHERE k = 'big'",
                ("$." + ".".join(f'"{segment}"' for segment in path), leaf_value(rng)),
            )
            conn.execute("COMMIT")

        ours = measure(folder, BLOB_THRESHOLD, docs, args.runs, read_baseline)
        read_base_ms = ours["read_base"]
        naive_ms = median_ms(naive_write, 15)
        naive_wal = wal_per_write(conn, os.path.join(folder, "blob.sqlite3-wal"), naive_write, 3)

        sweep: list[tuple[int, dict[str, float]]] = []
        if not args.no_sweep:
            for threshold in (512, 1024, 2048, 4096, 16384, 65536):
                result = measure(folder, threshold, docs, args.runs // 2, read_baseline, 3)
                sweep.append((threshold, result))
        flat = flat_reads(folder, conn)
        conn.close()
    postgres = measure_postgres(docs, args.runs) if args.postgres else None

    write_ratio = ours["big"] / ours["small"]
    read_ratio = ours["read"] / read_base_ms
    rows = [
        ("leaf write, 10 MB doc vs 1 KB doc", ours["big"], ours["small"], write_ratio, 2.0),
        (
            "read 1 MB doc: get() vs blob row + json.loads",
            ours["read"],
            read_base_ms,
            read_ratio,
            2.0,
        ),
        (
            "write 10 MB doc whole: set() vs json.dumps",
            ours["whole_write"],
            ours["dumps"],
            ours["whole_write"] / ours["dumps"],
            3.0,
        ),
        (
            "read 10 MB doc whole: get() vs json.loads",
            ours["whole_read"],
            ours["loads"],
            ours["whole_read"] / ours["loads"],
            2.0,
        ),
        (
            "context: 10 MB doc leaf write vs naive json_set",
            ours["big"],
            naive_ms,
            ours["big"] / naive_ms,
            None,
        ),
        (
            f"read list of {FLAT_ITEMS} ints vs json.loads",
            *flat["flat"],
            flat["flat"][0] / flat["flat"][1],
            3.0,
        ),
        (
            f"read object of {FLAT_MEMBERS} ints vs json.loads",
            *flat["members"],
            flat["members"][0] / flat["members"][1],
            3.0,
        ),
        (
            "context: delete list item 2 (+append) vs set last",
            *flat["delete"],
            flat["delete"][0] / flat["delete"][1],
            None,
        ),
    ]
    print(
        f"SQLiteStorage, blob threshold {BLOB_THRESHOLD} bytes, {ours['rows']:.0f} node rows stored"
    )
    print(f"{'operation (medians)':<48} {'ours ms':>9} {'baseline ms':>12} {'ratio':>7}  target")
    for name, mine, base, ratio, target in rows:
        verdict = (
            "-"
            if target is None
            else f"<= {target:.0f}x " + ("met" if ratio <= target else "MISSED")
        )
        print(f"{name:<48} {mine:>9.3f} {base:>12.3f} {ratio:>6.3g}x  {verdict}")
    print(
        f"WAL per leaf write, 10 MB doc: ours {ours['wal'] / 1024:.1f} KiB,"
        f" naive json_set {naive_wal / 1024:.1f} KiB"
    )
    if postgres is not None:
        print()
        print(f"{'PostgreSQL beside SQLite (medians, ms)':<48} {'PostgreSQL':>10} {'SQLite':>9}")
        pg_write_ratio = postgres["big"] / postgres["small"]
        pg_read_ratio = postgres["read"] / postgres["read_base"]
        pg_whole_write = postgres["whole_write"] / postgres["dumps"]
        pg_whole_read = postgres["whole_read"] / postgres["loads"]
        whole_write = ours["whole_write"] / ours["dumps"]
        whole_read = ours["whole_read"] / ours["loads"]
        for name, pg, lite in (
            ("leaf write, 10 MB doc", postgres["big"], ours["big"]),
            ("leaf write, 1 KB doc", postgres["small"], ours["small"]),
            ("  ratio 10 MB / 1 KB (target <= 2x)", pg_write_ratio, write_ratio),
            ("read 1 MB doc with get()", postgres["read"], ours["read"]),
            ("  ratio to blob row + json.loads (<= 2x)", pg_read_ratio, read_ratio),
            ("write 10 MB doc whole with set()", postgres["whole_write"], ours["whole_write"]),
            ("  ratio to json.dumps (<= 3x)", pg_whole_write, whole_write),
            ("read 10 MB doc whole with get()", postgres["whole_read"], ours["whole_read"]),
            ("  ratio to json.loads (<= 2x)", pg_whole_read, whole_read),
            ("naive write of the 10 MB doc (jsonb_set, json_set)", postgres["naive"], naive_ms),
        ):
            print(f"{name:<48} {pg:>10.3f} {lite:>9.3f}")
    if sweep:
        print()
        header = ("threshold", "rows", "10MB leaf", "1KB leaf", "ratio", "1MB get", "ratio")
        header += ("10MB set", "ratio")
        print("{:>9} {:>7} {:>10} {:>10} {:>6} {:>10} {:>6} {:>9} {:>6}   (ms)".format(*header))
        for threshold, result in [(BLOB_THRESHOLD, ours), *sweep]:
            print(
                f"{threshold:>9} {result['rows']:>7.0f} {result['big']:>10.3f}"
                f" {result['small']:>10.3f} {result['big'] / result['small']:>5.2f}x"
                f" {result['read']:>10.3f} {result['read'] / result['read_base']:>5.2f}x"
                f" {result['whole_write']:>9.1f} {result['whole_write'] / result['dumps']:>5.2f}x"
            )


if __name__ == "__main__":
    main()
