"""The HTTP/1.1 protocol of a worker: uvicorn's httptools protocol, with bounded request heads.

httptools buffers a request head of any size, and uvicorn waits for one
forever, so a client could take a worker's memory with one huge header or
its open files with many slow ones. This protocol answers a head over
:attr:`HeadLimits.max_head_bytes` with 431 and a head not complete within
:attr:`HeadLimits.header_timeout` with 408, before the app (so before
authentication) sees anything; and it keeps a worker's connections under
:attr:`HeadLimits.max_connections` by closing, for each connection over it,
the one that has waited longest for a request head (the newest one itself
when every other connection has a request in flight).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest request head (request line and headers) a worker reads."""
HEADER_TIMEOUT: Final = 10.0
"""Seconds a connection may take to send a request head, from its first byte or its opening."""
HEAD_PIECE: Final = 16384
"""Most bytes of a request head fed to the parser at once. A piece that ends one request
and starts the next counts, as the next one's, only what follows it: so a head is refused
by the time it is :attr:`HeadLimits.max_head_bytes` plus this long, pipelined or not."""
LINGER: Final = 2.0
"""Seconds a refused connection is read and discarded, so the client can read the answer."""
NOTICE_EVERY: Final = 10.0
"""Seconds between two log lines about refused connections of one kind."""
HTTP_VERSIONS: Final = frozenset({"1.0", "1.1"})
"""The HTTP versions a request head may name; httptools also reads 0.9 and 2.0."""
ALONE: Final = "kvpio.alone"
"""The scope key that is true for a request that came when the worker had no other in
progress: a write of it has nothing to wait for to share a commit with."""


@dataclass(frozen=True)
class HeadLimits:
    """What one worker accepts of request heads and connections."""

    max_head_bytes: int = MAX_HEAD_BYTES
    header_timeout: float = HEADER_TIMEOUT
    max_connections: int = 1024


class _Notices:
    """One stderr line per kind of refusal at most every :data:`NOTICE_EVERY` seconds, counted."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def tell(self, kind: str, line: str) -> None:
        now = time.monotonic()
        self._since[kind] = self._since.get(kind, 0) + 1
        if now - self._last.get(kind, -NOTICE_EVERY) >= NOTICE_EVERY:
            count = self._since.pop(kind)
            more = f" ({count} times in the last {NOTICE_EVERY:g} s)" if count > 1 else ""
            sys.stderr.write(f"kvpio serve: {line}{more}\n")
            self._last[kind] = now


class _Gathered:
    """A connection's transport as its answers see it: one loop turn's writes leave together.

    uvicorn writes a response's head and its body separately, a system call
    each; held until the end of the loop's turn, they leave in one ``writev``.
    A head written alone (a stream's, before its first event) leaves at that
    turn's end all the same.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Send what is held now."""
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.writelines(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; the class attributes are set per server by :func:`protocol_class`."""

    limits: ClassVar[HeadLimits] = HeadLimits()
    waiting: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]] = OrderedDict()
    """Connections waiting for a request head (idle ones included), the longest waiting first."""
    notices: ClassVar[_Notices] = _Notices()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._bad_head = ""
        self._last_answer: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._gathered = _Gathered(transport, self.loop)
        self.waiting[self] = None
        self._start_head_timer()
        if len(self.connections) > self.limits.max_connections:
            oldest = next(iter(self.waiting))
            oldest._drop()
            self.notices.tell(
                "cap", f"over {self.limits.max_connections} connections: closed the longest idle"
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, at most :attr:`HeadLimits.max_head_bytes` of a request head."""
        if self._refused:
            return
        limit = self.limits.max_head_bytes
        while self._in_head and data:
            room = min(limit - self._head_bytes, HEAD_PIECE)
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
            if self._in_head and self._head_bytes >= limit:
                self._refuse(431, f"the request head is over {limit} bytes")
                return
            if self._in_head and self._head_timer is None and self._head_bytes:
                # A head not whole in its first read: timed from now (one that is whole
                # in it, as most are, costs no timer).
                self._start_head_timer()
        if data:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.waiting.pop(self, None)
        self._stop_head_timer()
        version = self.parser.get_http_version()
        if version not in HTTP_VERSIONS:
            # httptools reads "HTTP/0.9" and "HTTP/2.0" heads, which no ASGI app takes: an
            # error raised in a parser callback ends the parse, and uvicorn answers it with
            # send_400_response.
            self._bad_head = f"HTTP/{version} is not served, only HTTP/1.1 and HTTP/1.0"
            raise ValueError(self._bad_head)
        self.scope[ALONE] = not self.tasks  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self._gathered  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._last_answer is not None and self._answered_all():
            self._send_last_answer()
        elif self.cycle.response_complete and not self.transport.is_closing():
            self.waiting[self] = None

    def send_400_response(self, msg: str) -> None:
        """Answer a request that does not parse, or is not HTTP/1.x, with a JSON error, as
        every other 4xx is (see :meth:`_refuse`)."""
        self._refuse(400, self._bad_head or "invalid HTTP request", told=False)

    def shutdown(self) -> None:
        """The server is stopping: answers already made leave before the connection closes
        (uvicorn closes the transport beneath :class:`_Gathered`)."""
        self._gathered.flush()
        super().shutdown()

    def _answered_all(self) -> bool:
        """Whether every request read on this connection has its whole answer."""
        return not self.pipeline and (self.cycle is None or self.cycle.response_complete)

    def _send_last_answer(self) -> None:
        assert self._last_answer is not None
        self._gathered.flush()  # the answers before it go first
        self.transport.write(self._last_answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0 or (self.cycle is not None and not self.cycle.response_complete):
            self._drop()
        else:
            timeout = self.limits.header_timeout
            self._refuse(408, f"the request head did not arrive within {timeout:g} s")

    def _drop(self) -> None:
        """Close the connection now, without an answer (one already made still leaves)."""
        self.waiting.pop(self, None)
        self.connections.discard(self)
        self._stop_head_timer()
        self._gathered.flush()
        self.transport.close()

    def _refuse(self, status: int, message: str, *, told: bool = True) -> None:
        """Answer ``status`` and close, once the requests pipelined before it are answered,
        discarding what the client still sends for a moment; ``told``: log it (at most
        once in :data:`NOTICE_EVERY` seconds per status)."""
        self.waiting.pop(self, None)
        self._stop_head_timer()
        self._refused = True  # nothing after it is read
        self._last_answer = _error_answer(status, message)
        if self._answered_all():
            self._send_last_answer()
        if told:
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            self.notices.tell(str(status), f"{status} to {peer}: {message}")


def _error_answer(status: int, message: str) -> bytes:
    """A whole error answer that closes the connection: ``{"error": message}``, as the app's."""
    body = json.dumps({"error": message}).encode()
    return (
        STATUS_LINE[status]
        + b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


def protocol_class(limits: HeadLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server with these limits (``uvicorn.Config(http=...)``)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"limits": limits, "waiting": OrderedDict(), "notices": _Notices()},
    )
