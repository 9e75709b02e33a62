"""A loopback HTTP server of the tests' own, for answers a real kvpio server never gives.

It answers every request with one canned answer (``status``, ``headers``,
``body``), can answer each request ``delay`` seconds late (a distant server,
for what concurrency gains), can hang (bounded), close without answering
(``drop``: the answer is lost after the request arrived), cut an answer
short, reset a keep-alive connection that stayed idle, as a server
closing idle connections does when a request races the close, or answer
with exact bytes (``raw``: garbled, chunked or oddly framed answers), sent in
pieces a moment apart so the client reads them as they come.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG_LIMIT = 10.0
RAW_PAUSE = 0.02
"""Seconds between the pieces of a raw answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server
    answered_at: float | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def setup(self) -> None:
        super().setup()
        with self.server.fault.lock:
            self.server.fault.connections += 1

    def handle_one_request(self) -> None:
        fault = self.server.fault
        readable, _, _ = select.select([self.connection], [], [], HANG_LIMIT)
        if not readable or not self.connection.recv(1, socket.MSG_PEEK):
            self.close_connection = True  # nothing came, or the client closed
            return
        idle = time.monotonic() - self.answered_at if self.answered_at is not None else 0.0
        if fault.reset_idle_after is not None and idle >= fault.reset_idle_after:
            fault.resets += 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        super().handle_one_request()
        self.answered_at = time.monotonic()

    def _answer(self) -> None:
        fault = self.server.fault
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        fault.requests.append((self.command, self.path))
        if fault.delay:
            with fault.lock:
                fault.waiting += 1
                fault.most_waiting = max(fault.most_waiting, fault.waiting)
            time.sleep(fault.delay)
            with fault.lock:
                fault.waiting -= 1
        if fault.raw is not None:
            for number, piece in enumerate(fault.raw):
                if number:
                    time.sleep(RAW_PAUSE)
                self.wfile.write(piece)
                self.wfile.flush()
            self.close_connection = fault.raw_close
            return
        if fault.hang or fault.drop:
            if fault.hang:
                fault.released.wait(HANG_LIMIT)
            self.close_connection = True
            return
        body = fault.body
        self.send_response(fault.status)
        for name, value in fault.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) + fault.short_by))
        self.end_headers()
        self.wfile.write(body)
        if fault.short_by:
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_HEAD = _answer


class Fault:
    """What the server does with the next requests; change it between requests."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        self.body = b'"value"'
        self.short_by = 0
        self.delay = 0.0
        self.waiting = self.most_waiting = 0  # requests in their delay, now and at most
        self.lock = threading.Lock()
        self.hang = False
        self.drop = False
        self.released = threading.Event()
        self.reset_idle_after: float | None = None
        self.resets = 0
        self.requests: list[tuple[str, str]] = []
        self.connections = self.closed = 0  # connections accepted, and closed by the server
        self.raw: list[bytes] | None = None
        self.raw_close = False
        self.url = ""

    def answer_raw(self, *pieces: bytes, close: bool = False) -> None:
        """Answer every request with exactly ``pieces`` (then close the connection if ``close``)."""
        self.raw = list(pieces)
        self.raw_close = close

    def drip(self, part: str) -> None:
        """Answer every request a byte at a time from its ``head`` or its ``body`` on: each
        read is quick, the whole answer (a byte every 20 ms) takes over 4 s."""
        body = b'"' + b"x" * 200 + b'"'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        answer = head + body
        cut = len(head) if part == "body" else 10
        self.answer_raw(answer[:cut], *(answer[at : at + 1] for at in range(cut, len(answer))))

    def answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        """Answer every request with ``status``, ``headers`` (``_`` for ``-``) and ``body``."""
        self.status = status
        self.body = body
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    fault: Fault

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.fault.lock:
            self.fault.closed += 1


@contextmanager
def fault_server() -> Iterator[Fault]:
    """A running fault server on loopback; its :class:`Fault` has the ``url``."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fault = Fault()
    server.fault.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.fault
    finally:
        server.fault.released.set()
        server.shutdown()
        server.server_close()
        thread.join(HANG_LIMIT)
