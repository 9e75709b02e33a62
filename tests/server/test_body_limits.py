"""Request bodies arrive whole and in time, or change nothing (``kvpio_mapping.server.bodies``).

Raw sockets against a real ``kvpio serve`` on loopback: only they can stop
half-way through a body or trickle one.
"""

from __future__ import annotations

import base64
import socket
import time
from urllib.parse import urlsplit

import pytest

from kvpio_mapping.testing import Api, RunningServer, run_server

KEY = "body-key"
AUTH = b"Authorization: Basic " + base64.b64encode(KEY.encode() + b":") + b"\r\n"


def connect(server: RunningServer) -> socket.socket:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def head(path: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: kvpio\r\nContent-Type: application/json\r\n".encode()
        + AUTH
        + framing.encode()
        + b"\r\n\r\n"
    )


def wait_for_log(server: RunningServer, text: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while text not in server.stderr():
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sent", "length"),
    [
        (b"12", 3),  # would read as the complete, valid body 12
        (b"[1,2]", 9),
        (b"3\r\n[1]\r\n", None),  # chunked, and the last chunk never comes
    ],
)
def test_a_client_gone_part_way_through_its_body_changes_nothing(
    sent: bytes, length: int | None
) -> None:
    with run_server(api_key=KEY, options=["--log-level", "info"]) as server:
        api = Api(server.url, KEY)
        assert api.post("/v1/bucket/t", json="before").status_code == 200
        with connect(server) as sock:
            sock.sendall(head("/v1/bucket/t", length) + sent)
            time.sleep(0.2)  # the server has the head and the part, and starts the request
        wait_for_log(server, "before its body ended; nothing was changed")
        assert api.get("/v1/bucket/t").json() == "before"
        assert api.get("/v1/account").json()["size"] == len('{"t":"before"}')


def test_a_trickled_body_gets_408_and_changes_nothing() -> None:
    with run_server(api_key=KEY, options=["--body-timeout", "1"]) as server:
        api = Api(server.url, KEY)
        with connect(server) as sock:
            sock.sendall(head("/v1/bucket/t", 1000) + b'"')
            answer = b""
            started = time.monotonic()
            while time.monotonic() - started < 8 and not answer:
                try:
                    sock.sendall(b"x")  # a byte every 0.2 s earns 2 ms each
                except OSError:
                    break
                sock.settimeout(0.2)
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
            sock.settimeout(5)
            try:
                while chunk := sock.recv(65536):  # then the server closes the connection
                    answer += chunk
            except ConnectionResetError:
                pass  # closed with a trickled byte unread, which makes the kernel reset
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        assert b"did not arrive within 1 s" in answer
        assert api.get("/v1/bucket/t").status_code == 200
        assert api.get("/v1/bucket/t").text == ""


def test_a_slow_but_steady_body_is_stored() -> None:
    # 2,000 bytes at about 2,500 bytes/s: slower than the timeout alone allows, faster
    # than the minimum rate, so each part earns the time the next one takes.
    body = b'"' + b"x" * 1998 + b'"'
    with run_server(api_key=KEY, options=["--body-timeout", "0.5"]) as server:
        with connect(server) as sock:
            sock.sendall(head("/v1/bucket/slow", len(body)))
            for start in range(0, len(body), 250):
                sock.sendall(body[start : start + 250])
                time.sleep(0.1)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert Api(server.url, KEY).get("/v1/bucket/slow").json() == "x" * 1998


def test_a_body_that_never_starts_gets_408_and_one_cut_before_it_starts_is_dropped() -> None:
    # Falcon reads a request's first event, and a change feed's later ones, outside its handlers.
    options = ["--body-timeout", "1", "--workers", "1"]
    with run_server(api_key=KEY, options=options) as server:
        api = Api(server.url, KEY)
        with connect(server) as sock:
            sock.sendall(head("/v1/bucket/t", 10))
            answer = b""
            while chunk := sock.recv(65536):  # the server answers, then closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"did not arrive within 1 s" in answer
        with connect(server) as sock:
            sock.sendall(head("/v1/bucket/t", 10))
            time.sleep(0.2)  # the server has the head, and waits for the body
        assert api.get("/v1/bucket/t").headers["Kvpio-Missing"] == "true"
        feed = head("/v1/bucket/", 10).replace(b"POST", b"GET", 1)
        with connect(server) as sock:  # a change feed reads on, to see the client leave
            sock.sendall(feed[:-2] + b"Accept: text/event-stream\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 408 ")
        assert "Exception in ASGI application" not in server.stderr()


def test_a_body_over_the_limit_is_refused_at_once_and_never_asked_for() -> None:
    with run_server(api_key=KEY, options=["--max-body", "1000"]) as server:
        for expect in (b"", b"Expect: 100-continue\r\n"):
            with connect(server) as sock:
                sock.sendall(head("/v1/bucket/t", 1001)[:-2] + expect + b"\r\n")
                answer = b""
                while chunk := sock.recv(65536):  # the server answers, then closes
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 413 "), answer
            assert b"over the limit of 1000 bytes" in answer
        assert Api(server.url, KEY).get("/v1/bucket/t").headers["Kvpio-Missing"] == "true"
