"""One account's heavy requests against another's small ones: this tree beside a baseline tree.

Each scenario runs against a ``kvpio serve`` started from this checkout and
one started from ``--baseline`` (another checkout of the project, say the
previous release), one after the other in the same run, and prints both:

- batch: one ``POST /v1/bucket/`` of ``--keys`` small top-level keys from
  account A (keys/s), while account B writes a small value in a loop
  (statuses, worst latency) and account C reads one (p99), on 2 workers;
- large reads: 8 processes reading A's 200,000-key bucket whole
  (``?values=true``) while B reads one small value (p99), on 1 worker;
- renders: 48 concurrent renders of A that each run into the 2 s render
  timeout while B renders ``Hello {{ name }}`` (worst latency), 1 worker;
- memory: 6 concurrent 15 MB batch bodies, the worker's peak RSS.

Loopback only; every loop is bounded in count and time. Run:
``.venv/bin/python benchmarks/busy_bench.py --baseline /path/to/old/checkout``
(a few minutes). On a machine shared with other work, compare the two
columns of one run rather than runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import requests

from kvpio_mapping.testing import RunningServer, new_account

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "kvpio serving on "
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BIG_READ_KEYS = 200_000
MEMORY_KEYS = 1_000_000
SECONDS = 120.0


@contextmanager
def serve(tree: str, workers: int) -> Iterator[RunningServer]:
    """``kvpio serve`` from the checkout ``tree`` on a temporary database."""
    directory = tempfile.mkdtemp(prefix="kvpio-bench-")
    db = os.path.join(directory, "kvpio.sqlite3")
    key = secrets.token_urlsafe(16)
    command = [sys.executable, "-m", "kvpio_mapping.server", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--db", db, f"--api-key={key}", "--workers", str(workers)]
    command += ["--max-body", str(64 * 2**20), "--render-timeout", "2"]
    env = {**os.environ, "PYTHONPATH": tree}
    stderr = open(os.path.join(directory, "stderr.log"), "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    url = line.removeprefix(PREFIX).split()[0] if line.startswith(PREFIX) else ""
    server = RunningServer(url, key, db, process)
    try:
        if not line.startswith(PREFIX):
            raise RuntimeError(f"{tree}: kvpio serve did not start")
        yield server
    finally:
        server.stop()
        stderr.close()


def session(server: RunningServer) -> requests.Session:
    http = requests.Session()
    http.auth = (new_account(server).api_key, "")
    return http


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else float("nan")


def probe_while(
    load: Callable[[], Any], copies: int, probe: Callable[[], float], pool: Any = None
) -> tuple[list[float], list[Any]]:
    """Run ``copies`` of ``load``; time ``probe`` until they end. Returns samples, results."""
    samples: list[float] = []
    with pool or ThreadPoolExecutor(copies) as runner:
        started = time.monotonic()
        futures = [runner.submit(load) for _ in range(copies)]
        while not all(f.done() for f in futures) and time.monotonic() - started < SECONDS:
            samples.append(probe())
            time.sleep(0.01)
        return samples, [f.result(timeout=SECONDS) for f in futures]


def timed(call: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        started = time.monotonic()
        call()
        return time.monotonic() - started

    return run


def batch(server: RunningServer, keys: int) -> dict[str, str]:
    big, writer, reader = session(server), session(server), session(server)
    reader.post(server.url + "/v1/bucket/small", json="tiny")
    body = json.dumps({f"{i:x}": i for i in range(keys)}, separators=(",", ":")).encode()
    statuses: list[int] = []
    write_times: list[float] = []

    def write_loop(stop: threading.Event) -> None:
        while not stop.is_set() and len(statuses) < 10_000:
            started = time.monotonic()
            answer = writer.post(server.url + "/v1/bucket/small", json=1, timeout=SECONDS)
            write_times.append(time.monotonic() - started)
            statuses.append(answer.status_code)

    def large() -> tuple[int, float]:
        started = time.monotonic()
        answer = big.post(server.url + "/v1/bucket/", data=body, timeout=SECONDS)
        return answer.status_code, time.monotonic() - started

    stop = threading.Event()
    writing = threading.Thread(target=write_loop, args=(stop,))
    writing.start()
    read = timed(lambda: reader.get(server.url + "/v1/bucket/small", timeout=SECONDS))
    samples, [(status, seconds)] = probe_while(large, 1, read)
    stop.set()
    writing.join(SECONDS)
    counts = {code: statuses.count(code) for code in sorted(set(statuses))}
    return {
        "batch status": str(status),
        f"batch keys/s ({len(body) / 2**20:.0f} MiB)": f"{keys / seconds:,.0f}",
        "other's writes: statuses": ", ".join(f"{c}x{n}" for c, n in counts.items()),
        "other's writes: worst s": f"{max(write_times, default=0):.2f}",
        "other's small reads: p99 ms": f"{p99(samples) * 1000:.0f}",
    }


def _read_whole(url: str, key: str, times: int) -> int:
    http = requests.Session()
    http.auth = (key, "")
    return sum(
        len(http.get(url + "/v1/bucket/?values=true", timeout=SECONDS).content)
        for _ in range(times)
    )


def large_reads(server: RunningServer) -> dict[str, str]:
    big, reader = session(server), session(server)
    body = json.dumps({f"key{i:06d}": {"n": i, "s": "x" * 8} for i in range(BIG_READ_KEYS)})
    assert big.post(server.url + "/v1/bucket/", data=body.encode(), timeout=SECONDS).ok
    reader.post(server.url + "/v1/bucket/small", json="tiny")
    load = functools.partial(_read_whole, server.url, str(big.auth[0]), 3)  # type: ignore[index]
    processes = ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("fork"))
    read = timed(lambda: reader.get(server.url + "/v1/bucket/small", timeout=SECONDS))
    samples, _ = probe_while(load, 8, read, processes)
    return {
        "other's small reads: p99 ms": f"{p99(samples) * 1000:.0f}",
        "other's small reads: worst ms": f"{max(samples) * 1000:.0f}",
    }


def renders(server: RunningServer) -> dict[str, str]:
    flood, other = session(server), session(server)
    flood.post(server.url + "/v1/templates/spin", json=SPIN)
    other.post(server.url + "/v1/templates/hello", json="Hello {{ name }}")
    other.post(server.url + "/v1/bucket/name", json="B")
    other.get(server.url + "/v1/templates/hello")

    def spin() -> int:
        return flood.get(server.url + "/v1/templates/spin", timeout=SECONDS).status_code

    statuses: list[int] = []

    def hello() -> float:
        started = time.monotonic()
        statuses.append(other.get(server.url + "/v1/templates/hello", timeout=SECONDS).status_code)
        return time.monotonic() - started

    samples, results = probe_while(spin, 48, hello)
    counts = {code: results.count(code) for code in sorted(set(results))}
    return {
        "flood statuses": ", ".join(f"{c}x{n}" for c, n in counts.items()),
        "other's render: statuses": ", ".join(
            f"{code}x{statuses.count(code)}" for code in sorted(set(statuses))
        ),
        "other's render: worst s": f"{max(samples, default=float('nan')):.2f}",
    }


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        peak = max(
            (int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), default=0
        )
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            for child in children.read().split():
                peak = max(peak, _peak_rss(int(child)))
    return peak


def memory(server: RunningServer) -> dict[str, str]:
    body = json.dumps({f"key{i:07d}": i for i in range(MEMORY_KEYS)}).encode()
    writers = [session(server) for _ in range(6)]

    def write(http: requests.Session) -> int:
        return http.post(server.url + "/v1/bucket/", data=body, timeout=SECONDS).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(write, writers))
    return {
        f"6 x {len(body) / 2**20:.0f} MB bodies: statuses": ", ".join(map(str, statuses)),
        "worker peak RSS MiB": f"{_peak_rss(server.pid) / 2**20:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="another checkout of the project")
    parser.add_argument("--keys", type=int, default=1_500_000)
    args = parser.parse_args()
    scenarios: list[tuple[str, int, Callable[[RunningServer], dict[str, str]]]] = [
        ("batch", 2, lambda server: batch(server, args.keys)),
        ("large reads", 1, large_reads),
        ("renders", 1, renders),
        ("memory", 1, memory),
    ]
    print(f"{'scenario / figure':<48} {'this tree':>16} {'baseline':>16}")
    for name, workers, scenario in scenarios:
        figures = []
        for tree in (HERE, os.path.abspath(args.baseline)):
            with serve(tree, workers) as server:
                figures.append(scenario(server))
        ours, baseline = figures
        for figure, value in ours.items():
            print(f"{name + ': ' + figure:<48} {value:>16} {baseline.get(figure, '-'):>16}")


if __name__ == "__main__":
    main()
