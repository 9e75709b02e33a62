"""A recording HTTP forward proxy on loopback, to see what a client sends through a proxy.

It takes absolute-form requests (``GET http://host:port/path``), records each
one's method, URL and headers, forwards it to the server it names over one
kept-alive connection per client connection, and relays the answer; it can
add headers to every answer (a ``Set-Cookie`` of a load balancer, say).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

UPSTREAM_TIMEOUT = 10.0


class Seen:
    """What the proxy forwarded, and what it adds to each answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.added: dict[str, str] = {}
        self.url = ""

    @property
    def calls(self) -> list[tuple[str, str]]:
        """``(method, absolute URL)`` of each forwarded request, in order."""
        return [(method, url) for method, url, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _forward(self) -> None:
        where = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items()}
        self.server.seen.requests.append((self.command, self.path, headers))
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(
                where.hostname or "", where.port, timeout=UPSTREAM_TIMEOUT
            )
        target = where.path + (f"?{where.query}" if where.query else "")
        self.upstream.request(self.command, target, body=body, headers=headers)
        answer = self.upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        for name, value in self.server.seen.added.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = do_PUT = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: Seen


@contextmanager
def recording_proxy() -> Iterator[Seen]:
    """A running proxy on loopback; its :class:`Seen` has the ``url`` to use as proxy."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.seen = Seen()
    server.seen.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(UPSTREAM_TIMEOUT)
