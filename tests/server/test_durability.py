"""Acknowledged writes survive kill -9; concurrent writers lose nothing; SIGTERM drains."""

from __future__ import annotations

import multiprocessing
import signal
import socket
import statistics
import time
from base64 import b64encode
from urllib.parse import urlsplit

import pytest
import requests

from kvpio_mapping.testing import run_server, start_server

pytestmark = pytest.mark.slow


def test_acknowledged_writes_survive_kill_9(tmp_path: object) -> None:
    db = f"{tmp_path}/kvpio.sqlite3"
    server = start_server(db)
    try:
        session = requests.Session()
        session.auth = (server.api_key, "")
        for n in range(300):
            response = session.post(f"{server.url}/v1/bucket/doc/item{n}", json={"n": n})
            assert response.status_code == 200
    finally:
        server.kill()
    with run_server(db=db, api_key=server.api_key) as again:
        everything = requests.get(f"{again.url}/v1/bucket/doc", auth=(server.api_key, "")).json()
    assert everything == {f"item{n}": {"n": n} for n in range(300)}


def _writer(url: str, key: str, writer: int, count: int) -> None:
    session = requests.Session()
    session.auth = (key, "")
    for n in range(count):
        response = session.post(f"{url}/v1/bucket/top/w{writer}-{n}", json=[writer, n])
        response.raise_for_status()


def test_concurrent_writer_processes_lose_nothing() -> None:
    with run_server(workers=2) as server:
        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_writer, args=(server.url, server.api_key, writer, 200))
            for writer in range(4)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
        top = requests.get(f"{server.url}/v1/bucket/top", auth=(server.api_key, "")).json()
    assert top == {f"w{w}-{n}": [w, n] for w in range(4) for n in range(200)}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(workers: int) -> None:
    server = start_server(workers=workers)
    try:
        parts = urlsplit(server.url)
        body = b'"' + b"x" * 10_000 + b'"'
        auth = b64encode(f"{server.api_key}:".encode()).decode()
        head = (
            f"POST /v1/bucket/slow HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as connection:
            connection.sendall(head + body[:5000])
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            connection.sendall(body[5000:])
            answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_keep_alive_requests_do_not_stall_with_two_workers() -> None:
    with run_server(workers=2) as server:
        session = requests.Session()
        session.auth = (server.api_key, "")
        session.post(f"{server.url}/v1/bucket/k", json={"a": [1, 2, 3]})
        times = []
        for _ in range(20):
            started = time.perf_counter()
            assert session.get(f"{server.url}/v1/bucket/k/a/2").content == b"2"
            times.append(time.perf_counter() - started)
    median = statistics.median(times) * 1000
    print(f"keep-alive GET median round trip with 2 workers: {median:.2f} ms")
    assert median < 20
