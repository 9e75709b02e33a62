"""The server's read path and big values, each beside its baseline from the same run.

Rows, each on a ``kvpio serve`` of one worker:

1. ``GET /v1/bucket/doc/a/b/c`` (a small value in a document of a few
   hundred keys) vs a revalidated ``GET /openapi.json`` (a 304 without
   body, auth or storage: the same Falcon/uvicorn stack's ceiling), with
   ``wrk`` (else a small keep-alive client), alternating rounds; beside
   requests/s, the worker's CPU time per request, which a shared machine
   disturbs less (target: nested at least 0.8 of the ceiling);
2. writing a whole 10 MB document (``POST``) vs ``json.dumps`` of it (compact) in this
   process (target: at most 3x), and reading it (``GET``, the body received,
   not decoded) vs ``json.loads`` of its text (target: at most 2x);
3. the worker's RSS, idle on a database holding a 200,000-key bucket, and
   after four whole-bucket reads (``GET /v1/bucket?values=true``) (target:
   at most 1.2x).

With ``--postgres``, every row also on PostgreSQL, a fresh database each (the
server ``$KVPIO_TEST_POSTGRES`` names, else a temporary one, as the tests
start it); its CPU column counts the worker only, not PostgreSQL's processes.

Run: ``.venv/bin/python benchmarks/read_bench.py [--postgres] [--big] [--nested]`` (2 minutes;
5 with PostgreSQL; ``--big``: only the big-value rows, seconds; ``--nested``: only the nested
GET's rows, 25 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import server_bench
from storage_bench import document

from kvpio_mapping.testing import RunningServer, run_postgres, run_server

ROUNDS = 3
BIG = 10_000_000
BIG_ROUNDS = 5
BUCKET_KEYS = 200_000
WHOLE_READS = 4
COMPACT = (",", ":")
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            for child in children.read().split():
                found += _tree(int(child))
    return found


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total += sum(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")
            )
    return total


def _drive(url: str, headers: dict[str, str], pids: list[int]) -> tuple[float, float]:
    """Requests/s of a load round, and the server's CPU microseconds per request."""
    before = _cpu_seconds(pids)
    if shutil.which("wrk"):
        options = [f"-H{name}: {value}" for name, value in headers.items()]
        seconds = server_bench.SECONDS
        command = ["wrk", "-t1", f"-c{server_bench.CONNECTIONS}", f"-d{seconds}s", *options, url]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found = re.search(r"(\d+) requests in", output)
        assert found, output
        count = int(found.group(1))
    else:
        count = int(server_bench._python_load(url, headers) * server_bench.SECONDS)
        seconds = server_bench.SECONDS
    used = _cpu_seconds(pids) - before
    return count / seconds, used / count * 1e6


def nested_rows(options: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    trivial: list[tuple[float, float]] = []
    nested: list[tuple[float, float]] = []
    with run_server(**options) as server:
        server_bench._load(server)
        pids = _tree(server.pid)
        tag = requests.get(server.url + server_bench.TRIVIAL).headers["ETag"]
        auth = {"Authorization": server_bench._auth(server.api_key)}
        for _ in range(ROUNDS):
            trivial.append(_drive(server.url + server_bench.TRIVIAL, {"If-None-Match": tag}, pids))
            nested.append(_drive(server.url + server_bench.NESTED, auth, pids))
    rate = statistics.median(r for r, _ in nested) / statistics.median(r for r, _ in trivial)
    cpu_n = statistics.median(c for _, c in nested)
    cpu_t = statistics.median(c for _, c in trivial)
    return [
        (
            "GET nested leaf vs GET /openapi.json 304, req/s",
            f"{statistics.median(r for r, _ in nested):.0f}",
            f"{statistics.median(r for r, _ in trivial):.0f}",
            f"{rate:.2f} (>= 0.80)",
        ),
        (
            "  the same, worker CPU us per request",
            f"{cpu_n:.1f}",
            f"{cpu_t:.1f}",
            f"{cpu_t / cpu_n:.2f} (>= 0.80)",
        ),
    ]


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def big_rows(options: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    value = document(BIG, seed=1)
    text = json.dumps(value, separators=COMPACT)
    body = text.encode()
    writes: list[float] = []
    dumps: list[float] = []
    reads: list[float] = []
    loads: list[float] = []
    with run_server(**options) as server, requests.Session() as session:
        session.auth = (server.api_key, "")
        url = server.url + "/v1/bucket/doc"
        headers = {"Content-Type": "application/json"}

        def write() -> None:
            session.post(url, data=body, headers=headers).raise_for_status()

        def read() -> None:
            response = session.get(url)
            response.raise_for_status()
            assert len(response.content) == len(body)

        for _ in range(BIG_ROUNDS):
            writes.append(_timed(write))
            dumps.append(_timed(lambda: json.dumps(value, separators=COMPACT)))
            reads.append(_timed(read))
            loads.append(_timed(lambda: json.loads(text)))
    size = f"{len(body) / 1e6:.1f} MB"
    write, dump = statistics.median(writes), statistics.median(dumps)
    read, load = statistics.median(reads), statistics.median(loads)
    return [
        (
            f"write a {size} document vs json.dumps, ms",
            f"{write * 1000:.0f}",
            f"{dump * 1000:.0f}",
            f"{write / dump:.2f} (<= 3)",
        ),
        (
            f"read a {size} document vs json.loads, ms",
            f"{read * 1000:.0f}",
            f"{load * 1000:.0f}",
            f"{read / load:.2f} (<= 2)",
        ),
    ]


@contextlib.contextmanager
def _database(options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``options`` with a database that outlives one server (a file, unless one is named)."""
    if "db" in options:
        yield options
        return
    with tempfile.TemporaryDirectory() as directory:
        yield {**options, "db": os.path.join(directory, "kvpio.sqlite3")}


def _fill(server: RunningServer) -> None:
    bucket = {f"key{i:07d}": {"n": i, "name": f"item {i}"} for i in range(BUCKET_KEYS)}
    requests.post(
        server.url + "/v1/bucket", json=bucket, auth=(server.api_key, ""), timeout=600
    ).raise_for_status()


def rss_rows(options: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """A worker started on the filled database: RSS idle, then after the whole reads."""
    with _database(options) as opened:
        with run_server(**opened) as server:
            _fill(server)
        with run_server(**opened, api_key=server.api_key) as server:
            session = requests.Session()
            session.auth = (server.api_key, "")
            session.get(server.url + "/v1/bucket/key0000001").raise_for_status()
            pids = _tree(server.pid)
            idle = _rss(pids)
            for _ in range(WHOLE_READS):
                response = session.get(server.url + "/v1/bucket?values=true", timeout=600)
                response.raise_for_status()
                del response
            time.sleep(0.5)
            after = _rss(pids)
    return [
        (
            f"worker RSS after {WHOLE_READS} whole reads of {BUCKET_KEYS:,} keys vs idle, MiB",
            f"{after / 2**20:.0f}",
            f"{idle / 2**20:.0f}",
            f"{after / idle:.2f} (<= 1.2)",
        )
    ]


def _print(label: str, rows: list[tuple[str, str, str, str]]) -> None:
    for operation, ours, baseline, ratio in rows:
        print(f"{label:<11} {operation:<62} {ours:>8} {baseline:>9} {ratio:>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", action="store_true", help="also serve from PostgreSQL")
    parser.add_argument(
        "--big", action="store_true", help="only the big-value rows (writing, reading 10 MB)"
    )
    parser.add_argument("--nested", action="store_true", help="only the nested GET's rows")
    args = parser.parse_args()
    only = [rows for rows, chosen in ((nested_rows, args.nested), (big_rows, args.big)) if chosen]
    tables = only or [nested_rows, big_rows, rss_rows]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    print(f"{'server':<11} {'operation':<62} {'ours':>8} {'baseline':>9} {'ratio':>13}")
    for rows in tables:
        _print("SQLite", rows({"workers": 1}))
    if args.postgres:
        with run_postgres() as postgres:
            for rows in tables:
                url = postgres.create_database()  # each its own: each server has its own key
                try:
                    _print("PostgreSQL", rows({"workers": 1, "db": url}))
                finally:
                    postgres.drop_database(url)


if __name__ == "__main__":
    main()
