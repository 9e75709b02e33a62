"""An uninvolved client's reads while others send huge or slow request heads.

Starts ``kvpio serve`` (one worker, temporary database) for each scenario and
measures the round trip of ``GET /v1/bucket/k`` by another account, each on
a new connection, side by side with what the attackers get:

- quiet: nobody else (the baseline, measured in the same run);
- huge heads: 8 clients each streaming a 64 MiB header;
- slow heads: 2,000 connections sending a request head a byte a second, to
  a server started with a soft limit of 1,024 open files.

Prints, per scenario, the reads' median and p99 (and their ratio to the
quiet p99), how many reads failed, what the attackers were answered, and
the server's peak RSS. Run: ``.venv/bin/python benchmarks/hostile_bench.py``
(about 40 s); it needs a hard open-file limit above 2,200.
"""

from __future__ import annotations

import resource
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests

from kvpio_mapping.testing import RunningServer, new_account, start_server

HEAD = b"GET /v1/bucket/ HTTP/1.1\r\nHost: kvpio\r\n"
READ_TIMEOUT = 10.0


def address(server: RunningServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reader(server: RunningServer) -> str:
    """The API key of a fresh account holding ``k``, the uninvolved client."""
    account = new_account(server)
    requests.post(f"{server.url}/v1/bucket/k", json=1, auth=(account.api_key, ""), timeout=10)
    return account.api_key


def reads_while(
    server: RunningServer, key: str, busy: Callable[[], bool], limit: float
) -> tuple[list[float], int]:
    """Round trips (s) of reads of ``k``, each on a new connection, while ``busy()``."""
    times: list[float] = []
    failed = 0
    deadline = time.monotonic() + limit
    while busy() and time.monotonic() < deadline:
        started = time.monotonic()
        try:
            answer = requests.get(f"{server.url}/v1/bucket/k", auth=(key, ""), timeout=READ_TIMEOUT)
            ok = answer.status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            times.append(time.monotonic() - started)
        else:
            failed += 1
        time.sleep(0.01)
    return times, failed


def quiet() -> tuple[list[float], int, str]:
    server = start_server()
    try:
        key = reader(server)
        until = time.monotonic() + 3
        times, failed = reads_while(server, key, lambda: time.monotonic() < until, 5)
        return times, failed, "-"
    finally:
        server.stop()


def huge_heads() -> tuple[list[float], int, str]:
    server = start_server()
    answers: Counter[str] = Counter()
    seconds: list[float] = []

    def attack() -> None:
        started = time.monotonic()
        with socket.create_connection(address(server), timeout=30) as sock:
            chunk = b"a" * (1 << 20)
            try:
                sock.sendall(HEAD + b"X-Big: ")
                for _ in range(64):
                    sock.sendall(chunk)
                sock.sendall(b"\r\n\r\n")
            except OSError:
                pass
            try:
                status = sock.recv(64).split(b"\r\n")[0].decode() or "closed"
            except OSError as exc:
                status = type(exc).__name__
        answers[status] += 1
        seconds.append(time.monotonic() - started)

    try:
        key = reader(server)
        threads = [threading.Thread(target=attack) for _ in range(8)]
        for thread in threads:
            thread.start()
        times, failed = reads_while(server, key, lambda: any(t.is_alive() for t in threads), 60)
        for thread in threads:
            thread.join(60)
        told = ", ".join(f"{n} x {status!r}" for status, n in answers.items())
        took = max(seconds) if seconds else float("nan")
        return times, failed, f"{told} within {took:.1f} s; RSS {peak_rss_mib(server.pid):.0f} MiB"
    finally:
        server.stop()


def slow_heads(count: int = 2000) -> tuple[list[float], int, str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        server = start_server()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sockets: list[socket.socket] = []
    stop = threading.Event()
    closed = 0

    def trickle() -> None:
        nonlocal closed
        for index in range(len(HEAD)):
            if stop.wait(1.0):
                return
            for sock in sockets:
                try:
                    sock.send(HEAD[index : index + 1])
                except OSError:
                    closed += 1

    try:
        key = reader(server)
        for _ in range(count):
            sock = socket.create_connection(address(server), timeout=5)
            sock.setblocking(False)
            sockets.append(sock)
        trickler = threading.Thread(target=trickle)
        trickler.start()
        until = time.monotonic() + 8
        times, failed = reads_while(server, key, lambda: time.monotonic() < until, 30)
        stop.set()
        trickler.join(30)
        return times, failed, f"{count} slow sockets, {closed} sends refused"
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def main() -> None:
    print(
        f"{'scenario':<12} {'reads':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'p99/quiet':>9}  attackers"
    )
    baseline = None
    scenarios = (("quiet", quiet), ("huge heads", huge_heads), ("slow heads", slow_heads))
    for name, scenario in scenarios:
        times, failed, note = scenario()
        if times:
            p50 = statistics.median(times) * 1000
            p99 = statistics.quantiles(times, n=100)[98] * 1000 if len(times) > 1 else p50
        else:
            p50 = p99 = float("nan")
        baseline = baseline or p99
        print(
            f"{name:<12} {len(times):>6} {failed:>6} {p50:>8.1f} {p99:>8.1f}"
            f" {p99 / baseline:>9.1f}  {note}"
        )


if __name__ == "__main__":
    main()
