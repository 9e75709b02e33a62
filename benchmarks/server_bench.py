"""Server throughput: a nested bucket GET against the same stack's cheapest endpoint.

Starts ``kvpio serve`` (2 workers, temporary database) and drives
``GET /v1/bucket/doc/a/b/c`` (a path in a document of a few hundred keys)
and a revalidated ``GET /openapi.json`` (``If-None-Match`` with its tag: a
304 without body, auth or storage, the stack's floor) side by side, in
alternating rounds, with ``wrk`` when it is installed, else with a small
multi-process keep-alive client; then the same on one worker, and on one
worker with the in-memory storage (which separates the HTTP layer's own
cost from the storage's). Last, the median round trip of one keep-alive
connection for each.

The SQLite storage keeps recent answers per connection (see
``kvpio_mapping/server/storage/sqlite.py``), so the repeated nested GET is
mostly served from that cache. The "spread" line reads leaves of the same
document instead, cycling through ``SPREAD`` paths, more than the cache
holds, so nearly every one of those reads goes to the database.

With ``--postgres``, the same on 2 workers sharing a PostgreSQL database
(the server ``$KVPIO_TEST_POSTGRES`` names, else a temporary one, as the
tests start it), measured in the same run.

Run: ``.venv/bin/python benchmarks/server_bench.py [--postgres]`` (about 100 s).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from kvpio_mapping.testing import RunningServer, run_postgres, run_server

ROUNDS = 3
SECONDS = 4
CONNECTIONS = 16
TARGET = 0.80
NESTED = "/v1/bucket/doc/a/b/c"
TRIVIAL = "/openapi.json"
SPREAD = "spread"
FILLER_KEYS = 300


def _document() -> dict[str, object]:
    filler = {
        f"key{n}": {"n": n, "tags": ["x", "y", "z"], "text": "lorem ipsum " * 4}
        for n in range(FILLER_KEYS)
    }
    return {"a": {"b": {"c": {"value": 42, "list": list(range(10))}}}, **filler}


def _spread_paths() -> list[str]:
    """Every leaf of the filler keys (1,500 paths), in the order they are read."""
    leaves = ["n", "text", "tags/1", "tags/2", "tags/3"]
    return [f"/v1/bucket/doc/key{n}/{leaf}" for leaf in leaves for n in range(FILLER_KEYS)]


def _auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _wrk(url: str, headers: dict[str, str], paths: list[str] | None = None) -> float:
    options = [f"-H{name}: {value}" for name, value in headers.items()]
    with tempfile.TemporaryDirectory() as directory:
        if paths is not None:
            script = os.path.join(directory, "paths.lua")
            with open(script, "w") as file:
                listed = ",".join(f'"{path}"' for path in paths)
                file.write(
                    f"local paths = {{{listed}}}\nlocal i = 0\n"
                    "request = function()\n  i = i % #paths + 1\n"
                    '  return wrk.format("GET", paths[i])\nend\n'
                )
            options.append(f"-s{script}")
        output = subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", *options, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert found, output
    return float(found.group(1))


def _client(
    host: str, port: int, paths: list[str], headers: dict[str, str], until: float, counts: object
) -> None:
    connection = http.client.HTTPConnection(host, port)
    done = 0
    for path in itertools.cycle(paths):
        if time.monotonic() >= until:
            break
        connection.request("GET", path, headers=headers)
        connection.getresponse().read()
        done += 1
    counts.put(done)  # type: ignore[attr-defined]


def _python_load(url: str, headers: dict[str, str], paths: list[str] | None = None) -> float:
    parts = urlsplit(url)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    until = time.monotonic() + SECONDS
    processes = [
        context.Process(
            target=_client,
            args=(parts.hostname, parts.port, paths or [parts.path], headers, until, queue),
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    total = sum(queue.get() for _ in processes)
    for process in processes:
        process.join()
    return float(total) / SECONDS


def _round_trip_ms(server: RunningServer, count: int = 200) -> float:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.netloc)
    headers = {"Authorization": _auth(server.api_key)}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", NESTED, headers=headers)
        connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    return statistics.median(times) * 1000


def _load(server: RunningServer) -> None:
    response = requests.post(
        server.url + "/v1/bucket/doc", json=_document(), auth=(server.api_key, "")
    )
    response.raise_for_status()


def _pair(options: dict[str, Any], rounds: int) -> tuple[float, float, float, float]:
    """Trivial, nested and spread requests/s (alternating rounds); the nested round trip in ms."""
    drive = _wrk if shutil.which("wrk") else _python_load
    results: dict[str, list[float]] = {NESTED: [], TRIVIAL: [], SPREAD: []}
    with run_server(**options) as server:
        _load(server)
        tag = requests.get(server.url + TRIVIAL).headers["ETag"]
        auth = {"Authorization": _auth(server.api_key)}
        for _ in range(rounds):
            results[TRIVIAL].append(drive(server.url + TRIVIAL, {"If-None-Match": tag}))
            results[NESTED].append(drive(server.url + NESTED, auth))
            results[SPREAD].append(drive(server.url + NESTED, auth, _spread_paths()))
        trip = _round_trip_ms(server)
    trivial, nested, spread = (statistics.mean(results[key]) for key in (TRIVIAL, NESTED, SPREAD))
    return trivial, nested, spread, trip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", action="store_true", help="also serve from PostgreSQL")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(run_postgres()) if args.postgres else None
        configurations: list[tuple[str, dict[str, Any], int]] = [
            ("2 workers, SQLite", {"workers": 2}, ROUNDS),
            ("1 worker, SQLite", {"workers": 1}, ROUNDS),
            ("1 worker, memory: storage", {"workers": 1, "db": "memory:"}, 1),
        ]
        if postgres is not None:
            url = postgres.create_database()
            stack.callback(postgres.drop_database, url)
            configurations.insert(1, ("2 workers, PostgreSQL", {"workers": 2, "db": url}, ROUNDS))
        measure(configurations)


def measure(configurations: list[tuple[str, dict[str, Any], int]]) -> None:
    """Drive each configuration's server and print its figures."""
    generator = "wrk -t1 -c16" if shutil.which("wrk") else "4 keep-alive client processes"
    print(f"kvpio serve, load from {generator}, alternating rounds of {SECONDS} s")
    print(f"{'server':<27} {'operation':<36} {'requests/s':>11} {'ratio':>6} {'target':>7}")
    trips = []
    for label, options, rounds in configurations:
        trivial, nested, spread, trip = _pair(options, rounds)
        trips.append(f"{label} {trip:.2f} ms")
        print(f"{label:<27} {'GET ' + TRIVIAL + ' 304 (baseline)':<36} {trivial:>11.0f} {1:>6.2f}")
        print(
            f"{label:<27} {'GET ' + NESTED:<36} {nested:>11.0f} {nested / trivial:>6.2f} "
            f"{'>= ' + format(TARGET, '.2f'):>7}"
        )
        spread_label = f"GET {len(_spread_paths())} leaves, cycled"
        print(f"{label:<27} {spread_label:<36} {spread:>11.0f} {spread / trivial:>6.2f}")
    print(f"median keep-alive round trip of GET {NESTED}: " + "; ".join(trips))


if __name__ == "__main__":
    main()
