"""Request heads are bounded: 431 over 64 KiB, 408 when too slow, connections capped;
and the protocol marks a request that arrives with nothing else in progress.

Raw sockets against a real ``kvpio serve`` on loopback (the marking: the
protocol under uvicorn in-process); every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import uvicorn

from kvpio_mapping.server.heads import ALONE, HeadLimits, protocol_class
from kvpio_mapping.testing import RunningServer, run_server, start_server

pytestmark = pytest.mark.slow

HEAD = b"GET /v1/bucket/ HTTP/1.1\r\nHost: kvpio\r\n"


def address(server: RunningServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def answer_of(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes, or ``timeout`` seconds pass."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


def read_status(server: RunningServer) -> int:
    url = server.url + "/v1/bucket/"
    return requests.get(url, auth=(server.api_key, ""), timeout=5).status_code


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# defect 3: request-header size limit


def test_a_head_over_64_kib_gets_431_before_authentication() -> None:
    with run_server() as server, socket.create_connection(address(server), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"X-Big: " + b"a" * 200_000)
        answer = answer_of(sock, 5)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert answer.endswith(b'\r\n\r\n{"error": "the request head is over 65536 bytes"}')
        assert time.monotonic() - started < 2
        assert "431 to 127.0.0.1:" in server.stderr()


def test_heads_of_other_http_versions_and_garbage_get_a_json_400() -> None:
    heads = {
        b"GET /v1/bucket/ HTTP/2.0\r\nHost: kvpio\r\n\r\n": b"HTTP/2.0 is not served",
        b"GET /v1/bucket/\r\n\r\n": b"HTTP/0.9 is not served",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n": b"invalid HTTP request",
    }
    with run_server() as server:
        for head, error in heads.items():
            with socket.create_connection(address(server), timeout=5) as sock:
                sock.sendall(head)
                answer = answer_of(sock, 5)
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
            assert b"content-type: application/json\r\n" in answer
            assert error in answer.partition(b"\r\n\r\n")[2]
        assert read_status(server) == 200
        assert "Exception in ASGI application" not in server.stderr()


@pytest.mark.parametrize(
    ("bad", "refusal"),
    [
        (b"NOT A REQUEST LINE\r\n\r\n", b"400 Bad Request"),
        (b"GET /v1/bucket/ HTTP/2.0\r\nHost: kvpio\r\n\r\n", b"400 Bad Request"),
        (HEAD + b"X-Big: " + b"a" * 100_000, b"431 Request Header Fields Too Large"),
    ],
    ids=["garbage", "HTTP/2.0", "head too large"],
)
def test_requests_pipelined_before_a_refused_one_are_answered_first(
    bad: bytes, refusal: bytes
) -> None:
    with run_server() as server, socket.create_connection(address(server), timeout=5) as sock:
        good = b"GET /healthz HTTP/1.1\r\nHost: kvpio\r\n\r\n"
        key = base64.b64encode(f"{server.api_key}:".encode())
        write = (
            b"POST /v1/bucket/piped HTTP/1.1\r\nHost: kvpio\r\nContent-Length: 1\r\n"
            b"Authorization: Basic " + key + b"\r\n\r\n7"
        )
        sock.sendall(good + write + good + bad)
        answer = answer_of(sock, 5)
        statuses = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", answer)
        assert statuses == [b"HTTP/1.1 200 OK"] * 3 + [b"HTTP/1.1 " + refusal], answer
        assert answer.endswith(b"}") and b'"error"' in answer.rpartition(b"\r\n\r\n")[2]
        stored = requests.get(server.url + "/v1/bucket/piped", auth=(server.api_key, ""), timeout=5)
        assert stored.json() == 7


def test_a_head_under_the_limit_is_served() -> None:
    with run_server() as server:
        headers = {"X-Big": "a" * 60_000}
        answer = requests.get(
            server.url + "/v1/bucket/", auth=(server.api_key, ""), headers=headers, timeout=5
        )
        assert answer.status_code == 200


def test_many_huge_heads_at_once_take_bounded_memory() -> None:
    """Eight clients stream up to 64 MiB of header each: all get 431, the worker stays small."""
    with run_server() as server:
        before = peak_rss_kib(server.pid)
        answers: list[bytes] = []

        def send_huge_head() -> None:
            with socket.create_connection(address(server), timeout=5) as sock:
                chunk = b"a" * (1 << 20)
                try:
                    sock.sendall(HEAD + b"X-Big: ")
                    for _ in range(64):
                        sock.sendall(chunk)
                except OSError:
                    pass  # the server answered and closed: the rest is not read
                answers.append(answer_of(sock, 5))

        threads = [threading.Thread(target=send_huge_head) for _ in range(8)]
        for thread in threads:
            thread.start()
        assert read_status(server) == 200
        for thread in threads:
            thread.join(30)
        assert len(answers) == 8
        assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), [a[:30] for a in answers]
        assert peak_rss_kib(server.pid) - before < 32 * 1024


# defect 4: header timeout, connection cap, open-file limit


def test_a_head_sent_a_byte_at_a_time_gets_408_after_the_header_timeout() -> None:
    with run_server(header_timeout=1) as server:
        with socket.create_connection(address(server), timeout=5) as sock:
            started = time.monotonic()
            answer = b""
            for byte in HEAD[:30]:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                sock.settimeout(0.2)
                try:
                    answer += sock.recv(4096)
                except TimeoutError:
                    continue
                if answer:
                    break
            answer += answer_of(sock, 2)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"did not arrive within 1 s" in answer
        assert 0.9 < time.monotonic() - started < 3


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    with run_server(header_timeout=1) as server, socket.create_connection(address(server)) as sock:
        started = time.monotonic()
        assert answer_of(sock, 4) == b""
        assert time.monotonic() - started < 3


@contextmanager
def slow_sockets(server: RunningServer, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent part of a request head and then nothing."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(server), timeout=5)
            sockets.append(sock)
            sock.sendall(HEAD[:20])
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def soft_open_files_limit(limit: int) -> Iterator[None]:
    """Lower this process's soft limit of open files (children inherit it) for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_new_client_is_served_while_2000_slow_sockets_are_open() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 2200:
        pytest.fail(f"this test needs 2,200 open files; the hard limit is {hard}")
    with soft_open_files_limit(1024):
        server = start_server()
    try:
        limits = Path(f"/proc/{server.pid}/limits").read_text().splitlines()
        open_files = next(line for line in limits if line.startswith("Max open files"))
        assert open_files.split()[3:5] == [str(hard), str(hard)]
        with slow_sockets(server, 2000):
            assert [read_status(server) for _ in range(20)] == [200] * 20
    finally:
        server.stop()


def test_connections_over_the_cap_close_those_waiting_longest() -> None:
    with run_server(max_connections=100) as server:
        with slow_sockets(server, 300) as sockets:
            assert [read_status(server) for _ in range(20)] == [200] * 20
            assert answer_of(sockets[0], 2) == b""  # closed to make room
            sockets[-1].settimeout(0.5)
            with pytest.raises(TimeoutError):
                sockets[-1].recv(1)  # still open
        assert "over 100 connections: closed the longest idle" in server.stderr()


# a write of a request with nothing else in progress commits at once (Server.commit)


def test_a_request_is_alone_only_while_its_worker_has_no_other_in_progress() -> None:
    seen: dict[str, object] = {}
    release = threading.Event()

    async def app(scope: dict[str, object], receive: object, send: Any) -> None:
        path = str(scope["path"])
        seen[path] = scope.get(ALONE)
        if path == "/hold":
            while not release.is_set():
                await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, lifespan="off", http=protocol_class(HeadLimits()), log_config=None)
    server = uvicorn.Server(config)
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the server never started"
            time.sleep(0.01)
        assert requests.get(url + "/first", timeout=5).status_code == 204
        holding = threading.Thread(target=requests.get, args=(url + "/hold",), daemon=True)
        holding.start()
        while "/hold" not in seen:
            assert time.monotonic() < deadline, "the held request never arrived"
            time.sleep(0.01)
        assert requests.get(url + "/during", timeout=5).status_code == 204
        release.set()
        holding.join(5)
        # The held request's task is let go in a later turn of the loop.
        while requests.get(url + "/after", timeout=5).status_code == 204 and not seen["/after"]:
            assert time.monotonic() < deadline, "the held request stayed in progress"
            time.sleep(0.01)
    finally:
        release.set()
        server.should_exit = True
        serving.join(10)
        sock.close()
    assert seen == {"/first": True, "/hold": True, "/during": False, "/after": True}
