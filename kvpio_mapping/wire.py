"""One HTTP/1.1 exchange on an open keep-alive connection of a urllib3 pool, with little machinery.

For every call urllib3's ``urlopen`` builds a Retry and a Timeout, copies
and checks the headers, percent-encodes the target byte by byte, parses the
answer's headers with the email package and wraps it all in two response
objects: most of a small call's client time. A :class:`Wire` writes the
request head of its pool once (``http.client`` itself spells it, so the
bytes are those ``urlopen`` sends), then per call adds only the target, the
call's own headers and the body, sends them with one ``sendall`` and reads
the status line, the headers and the body (Content-Length, chunked, or up
to the close) straight from the socket.

A plain HTTP connection without a proxy is opened here too, so that even a
first call's answer is read by its deadline. What is unusual goes the old
way: for an HTTPS or proxied connection not yet open, or a target, method or
header that needs encoding or checking, the caller uses ``urlopen``; an
answer with an interim 1xx, another HTTP version, folded or odd header
lines, a content coding or cookies is handed, with the bytes already
received, to ``http.client`` and urllib3's ``HTTPResponse``.
Failures raise what ``urlopen`` (with ``requests``' ``Retry(0, read=False)``)
and ``HTTPResponse.read`` raise for them, and the connection goes back to
the pool as urllib3 gives it back.
"""

from __future__ import annotations

import errno
import http.client
import io
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import urllib3.exceptions as u3
from urllib3 import HTTPConnectionPool, HTTPHeaderDict, HTTPResponse
from urllib3.util import SKIP_HEADER

RECEIVE: Final = 65536
"""Bytes asked of the socket at a time."""
MAX_HEAD: Final = 65536
"""An answer head longer than this goes to ``http.client`` (which takes 100 lines of 64 KiB)."""
MAX_LINE: Final = 65536
"""The longest chunk-size or trailer line, as ``http.client`` allows."""
MAX_LINES: Final = 101
"""Lines of a head with more header fields than ``http.client`` takes (100)."""
JOINED: Final = 65536
"""A body up to this size goes out in the same ``sendall`` as the head."""

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_WITHOUT_BODY: Final = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
"""Methods urllib3 sends no ``Content-Length`` for when they have no body."""
_NO_CONTENT: Final = frozenset({204, 304})
_PATH: Final = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*"
_PLAIN_PREFIX: Final = re.compile("/" + _PATH)
_PLAIN_TARGET: Final = re.compile(
    _PATH + r"(?:\?(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-F]{2})*)?"
)
"""A target urllib3 sends as it is: nothing to percent-encode, every escape already in
upper case (anything else goes through ``urlopen``, which encodes it)."""
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEAD: Final = re.compile(
    r"HTTP/1\.1 ([2-9][0-9][0-9])(?: ([^\r\n]*))?((?:\r\n[!-9;-~]+:[^\r\n]*)*)"
)
"""The answer heads read here: HTTP/1.1, a final status, one ``name: value`` per line."""
_STATUS: Final = re.compile(rb"HTTP/1\.1 [2-9][0-9][0-9](?: [^\r\n]*)?\r\n")
"""The status line of :data:`_HEAD`, to tell early that a head is not one of those."""
_FOLD: Final = re.compile(r"[ \t]*\r\n[ \t]+")


class _Recorder(http.client.HTTPConnection):
    """An ``http.client`` connection that keeps what it would send instead of sending it."""

    def __init__(self, host: str, port: int | None, default_port: int) -> None:
        self.default_port = default_port  # before http.client reads it for a missing port
        self.written = b""
        super().__init__(host, port)

    def send(self, data: Any) -> None:
        self.written += data


class Answer:
    """An answer whose head was read here; :meth:`read` reads its body and gives the
    connection back to the pool (closed if the answer asked for it or went wrong)."""

    __slots__ = (
        "_close",
        "_conn",
        "_deadline",
        "_framing",
        "_pool",
        "_rest",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str],
        framing: int | None,
        close: bool,
        rest: bytes,
        conn: Any,
        pool: HTTPConnectionPool,
        deadline: float,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        """The header fields by name as first spelled, repeated fields joined by ``", "``."""
        self._framing = framing
        self._close = close
        self._rest = rest
        self._conn = conn
        self._pool = pool
        self._deadline = deadline

    def read(self) -> bytes:
        """The whole body; raises what ``HTTPResponse.read`` raises when it cannot be read."""
        conn = self._conn
        read = False
        extra = b""
        try:
            body, extra = _body(conn.sock, self._rest, self._framing, self._deadline)
            read = True
        except TimeoutError as exc:
            raise u3.ReadTimeoutError(self._pool, None, "Read timed out.") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise u3.SSLError(exc) from exc
        except (http.client.HTTPException, OSError) as exc:
            raise u3.ProtocolError(f"Connection broken: {exc!r}", exc) from exc
        finally:
            if not read or self._close or extra:
                conn.close()
            self._pool._put_conn(conn)
        return body


class Wire:
    """Sends requests on the open connections of one urllib3 pool (see the module's notes).

    ``prefix`` is the path every target is below; ``headers`` go with every
    request, as urllib3 would send them; ``answered(conn)`` is called when
    an answer's head arrived on ``conn``. Thread-safe: each call takes a
    connection of its own from the pool.
    """

    def __init__(
        self,
        pool: HTTPConnectionPool,
        prefix: str,
        headers: Mapping[str, str],
        answered: Callable[[Any], None],
    ) -> None:
        self.pool = pool
        self.prefix = prefix
        self.headers = dict(headers)
        self.names = frozenset(name.lower() for name in headers)
        self.answered = answered
        self._fixed: str | None = None
        self._refused = False

    @classmethod
    def of(
        cls,
        pool: HTTPConnectionPool,
        prefix: str,
        headers: Mapping[str, str],
        answered: Callable[[Any], None],
    ) -> Wire | None:
        """The wire of ``pool``, or None where only ``urlopen`` does it right: a pool
        through a proxy, one without urllib3's connection hand-out, an unusual prefix, or
        headers whose framing urllib3 would work out."""
        names = {name.lower() for name in headers}
        if (
            not isinstance(pool, HTTPConnectionPool)
            or getattr(pool, "proxy", True) is not None
            or not all(hasattr(pool, name) for name in ("_get_conn", "_put_conn", "num_requests"))
            or not _PLAIN_PREFIX.fullmatch(prefix)
            or "user-agent" not in names
            or not names.isdisjoint(("content-length", "transfer-encoding"))
        ):
            return None
        return cls(pool, prefix, headers, answered)

    def _fixed_lines(self, conn: Any) -> str | None:
        """The header lines every request of this pool has (Host first), as ``http.client``
        writes them for ``conn``; None if it refuses one (then ``urlopen`` raises why)."""
        recorder = _Recorder(conn.host, conn.port, conn.default_port)
        try:
            recorder.putrequest(
                "GET",
                "/",
                skip_host="host" in self.names,
                skip_accept_encoding="accept-encoding" in self.names,
            )
            for name, value in self.headers.items():
                if value == SKIP_HEADER:
                    return None
                recorder.putheader(name, value)
            recorder.endheaders()
        except (ValueError, TypeError, UnicodeError):
            return None
        written = recorder.written
        return written[written.index(b"\r\n") + 2 : -2].decode("latin-1")

    def head(
        self, method: str, target: str, body: bytes | None, extra: Mapping[str, str] | None
    ) -> tuple[str, str] | None:
        """The request line and the call's own header lines (the pool's fixed lines go
        between them), or None if urllib3 must encode, check or frame them."""
        if self._refused or method not in _METHODS or not _PLAIN_TARGET.fullmatch(target):
            return None
        lines = ""
        names = self.names
        if extra:
            for name, value in extra.items():
                if (
                    type(value) is not str
                    or "\r" in value
                    or "\n" in value
                    or value == SKIP_HEADER
                    or not _TOKEN.fullmatch(name)
                    or name.lower() in names
                ):
                    return None
                lines += f"{name}: {value}\r\n"
        if body is not None:
            if type(body) is not bytes or "content-type" in names:
                return None
            lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        elif method not in _WITHOUT_BODY:
            lines += "Content-Length: 0\r\n"
        return f"{method} {self.prefix}{target} HTTP/1.1\r\n", lines

    def send(
        self,
        method: str,
        target: str,
        head: tuple[str, str],
        body: bytes | None,
        connect: float,
        read: float,
    ) -> Answer | HTTPResponse | None:
        """Send the request of :meth:`head` on an open connection and read the answer's head;
        None if the pool has no open connection to spare (``urlopen`` opens one). A plain
        HTTP connection without a proxy is opened here.

        Raises what ``urlopen`` raises for a failure on an open connection.
        """
        pool = self.pool
        conn: Any = pool._get_conn()
        sock = conn.sock
        if sock is None and pool.scheme == "http" and conn.proxy is None:
            # Opened here, so that this call's answer too is read by its deadline.
            sock = _opened(conn, pool, connect, self.prefix + target)
        fixed = self._fixed
        if fixed is None and sock is not None:
            fixed = self._fixed = self._fixed_lines(conn)
            self._refused = fixed is None
        if (
            sock is None
            or fixed is None
            or conn.proxy is not None
            or (pool.scheme == "https" and not conn.is_verified)
        ):
            pool._put_conn(conn)
            return None
        try:
            data = (head[0] + fixed + head[1] + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            pool._put_conn(conn)
            return None
        pool.num_requests += 1
        received: Answer | HTTPResponse | None = None
        try:
            sock.settimeout(connect)
            try:
                if body and len(body) <= JOINED:
                    sock.sendall(data + body)
                else:
                    sock.sendall(data)
                    if body:
                        sock.sendall(body)
            except BrokenPipeError:
                pass  # the server may have answered before it closed: read on
            except OSError as exc:
                if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):
                    raise _aborted(exc, pool, self.prefix + target, None) from exc
            try:
                received = self._receive(
                    conn, sock, method, self.prefix + target, time.monotonic() + read
                )
            except TimeoutError as exc:
                raise _aborted(exc, pool, self.prefix + target, read) from exc
            except (ssl.SSLError, ssl.CertificateError, http.client.HTTPException, OSError) as exc:
                timed_out = getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK)
                raise _aborted(
                    exc, pool, self.prefix + target, read if timed_out else None
                ) from exc
            self.answered(conn)
            return received
        finally:
            if received is None:
                conn.close()
                pool._put_conn(None)

    def _receive(
        self, conn: Any, sock: socket.socket, method: str, url: str, deadline: float
    ) -> Any:
        """Read the answer's head by ``deadline``: an :class:`Answer` (whose body is read by
        the same deadline), or urllib3's answer when it is unusual."""
        data = _recv(sock, deadline)
        if not data:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        end = data.find(b"\r\n\r\n")
        while end < 0:
            # what http.client would judge before the head is whole, it judges now
            status_end = data.find(b"\n")
            if (
                (status_end >= 0 and not _STATUS.match(data, 0, status_end + 1))
                or len(data) > MAX_HEAD
                or data.count(b"\n") > MAX_LINES
                or b"\n\n" in data
                or b"\n\r\n" in data
            ):
                return _handed_over(data, conn, sock, self.pool, method, url)
            more = _recv(sock, deadline)
            if not more:
                return _handed_over(data, conn, sock, self.pool, method, url)
            data += more
            end = data.find(b"\r\n\r\n")
        found = _HEAD.fullmatch(data[:end].decode("latin-1")) if end <= MAX_HEAD else None
        if found is None:
            return _handed_over(data, conn, sock, self.pool, method, url)
        status = int(found[1])
        headers: dict[str, str] = {}
        spelled: dict[str, str] = {}
        lines = found[3].split("\r\n")
        if len(lines) > MAX_LINES:
            return _handed_over(data, conn, sock, self.pool, method, url)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            value = value.lstrip(" \t")
            lower = name.lower()
            first = spelled.get(lower)
            if first is None:
                spelled[lower] = name
                headers[name] = value
            else:
                headers[first] += ", " + value
        if "content-encoding" in spelled or "set-cookie" in spelled or "set-cookie2" in spelled:
            return _handed_over(data, conn, sock, self.pool, method, url)
        framing: int | None = None
        coding = spelled.get("transfer-encoding")
        length = spelled.get("content-length")
        if coding is not None:
            if headers[coding].lower() != "chunked" or length is not None:
                return _handed_over(data, conn, sock, self.pool, method, url)
            framing = _CHUNKED
        elif length is not None:
            text = headers[length]
            if not (text.isascii() and text.isdigit()):
                return _handed_over(data, conn, sock, self.pool, method, url)
            framing = int(text)
        if method == "HEAD":
            framing = 0
        elif status in _NO_CONTENT:
            if coding is not None:  # http.client would read its chunks
                return _handed_over(data, conn, sock, self.pool, method, url)
            framing = 0
        connection = spelled.get("connection")
        close = framing is None or (
            connection is not None and "close" in headers[connection].lower()
        )
        reason = (found[2] or "").strip()
        rest = data[end + 4 :]
        return Answer(status, reason, headers, framing, close, rest, conn, self.pool, deadline)


_CHUNKED: Final = -1
"""The framing of a chunked body (a length is 0 or more; None: up to the close)."""


def _recv(sock: socket.socket, deadline: float, into: memoryview | None = None) -> Any:
    """What ``sock.recv`` (or ``recv_into`` of ``into``) gives, by ``deadline`` (of
    ``time.monotonic()``): ``TimeoutError`` once it passed, so a server that drips its
    answer a byte at a time cannot hold a call past its timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the answer did not arrive within the timeout")
    sock.settimeout(left)
    return sock.recv(RECEIVE) if into is None else sock.recv_into(into)


def _body(
    sock: socket.socket, rest: bytes, framing: int | None, deadline: float
) -> tuple[bytes, bytes]:
    """The body framed by ``framing`` (its start already in ``rest``) and any bytes after it,
    by ``deadline``."""
    if framing is None:
        parts = [rest]
        while more := _recv(sock, deadline):
            parts.append(more)
        return b"".join(parts), b""
    if framing == _CHUNKED:
        return _Chunks(sock, rest, deadline).read()
    if len(rest) >= framing:
        return rest[:framing], rest[framing:]
    return _exactly(sock, rest, framing, deadline), b""


def _exactly(sock: socket.socket, start: bytes, count: int, deadline: float) -> bytes:
    """``count`` bytes: ``start`` and the rest from the socket (``IncompleteRead`` if the
    connection closes first), received straight into one buffer by ``deadline``."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    got = len(start)
    view[:got] = start
    while got < count:
        received = _recv(sock, deadline, view[got:])
        if not received:
            raise http.client.IncompleteRead(bytes(view[:got]), count - got)
        got += received
    return bytes(buffer)


class _Chunks:
    """Reads a chunked body as ``http.client`` does, from bytes already received and the socket."""

    def __init__(self, sock: socket.socket, rest: bytes, deadline: float) -> None:
        self.sock = sock
        self.data = rest
        self.at = 0
        self.deadline = deadline

    def _more(self) -> bool:
        more = _recv(self.sock, self.deadline)
        self.data = self.data[self.at :] + more
        self.at = 0
        return bool(more)

    def line(self, what: str) -> bytes:
        """The next line, its end included (``b""`` at the close)."""
        while True:
            end = self.data.find(b"\n", self.at)
            if end >= 0 and end - self.at < MAX_LINE:
                line = self.data[self.at : end + 1]
                self.at = end + 1
                return line
            if len(self.data) - self.at > MAX_LINE:
                raise http.client.LineTooLong(what)
            if not self._more():
                line = self.data[self.at :]
                self.at = len(self.data)
                return line

    def take(self, count: int) -> bytes:
        """The next ``count`` bytes; ``IncompleteRead`` if the connection closes first."""
        start = self.at
        if len(self.data) - start >= count:
            self.at = start + count
            return self.data[start : self.at]
        taken = _exactly(self.sock, self.data[start:], count, self.deadline)
        self.data, self.at = b"", 0
        return taken

    def read(self) -> tuple[bytes, bytes]:
        parts: list[bytes] = []
        try:
            while True:
                size_line = self.line("chunk size")
                try:
                    size = int(size_line.split(b";", 1)[0], 16)
                except ValueError:
                    raise http.client.IncompleteRead(b"") from None
                if size < 0:
                    raise http.client.IncompleteRead(b"")
                if size == 0:
                    break
                parts.append(self.take(size))
                self.take(2)
            while self.line("trailer line") not in (b"\r\n", b"\n", b""):
                pass
        except http.client.IncompleteRead as exc:
            raise http.client.IncompleteRead(b"".join(parts)) from exc
        return b"".join(parts), self.data[self.at :]


def _opened(conn: Any, pool: HTTPConnectionPool, connect: float, url: str) -> socket.socket:
    """Connect the pool's connection ``conn`` within ``connect`` seconds; its socket.

    Raises what ``urlopen`` (with ``requests``' ``Retry(0, read=False)``)
    raises when it cannot connect, the connection given back to the pool.
    """
    conn.timeout = connect
    try:
        conn.connect()
    except (u3.NewConnectionError, u3.ConnectTimeoutError) as exc:
        conn.close()
        pool._put_conn(None)
        raise u3.MaxRetryError(pool, url, exc) from exc
    return cast(socket.socket, conn.sock)


def _aborted(
    exc: BaseException, pool: HTTPConnectionPool, url: str, read: float | None
) -> u3.HTTPError:
    """What ``urlopen`` raises for ``exc`` on an open connection (``read``: the read
    timeout, when ``exc`` is a read that timed out)."""
    if read is not None:
        return u3.ReadTimeoutError(pool, url, f"Read timed out. (read timeout={read})")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return u3.MaxRetryError(pool, url, u3.SSLError(exc))
    return u3.ProtocolError("Connection aborted.", exc)


class _Replay(io.RawIOBase):
    """The bytes of an answer already received, then the rest from the socket."""

    def __init__(self, received: bytes, sock: socket.socket) -> None:
        self._received = received
        # a socket file counts as a user of the socket: closing the connection waits for it
        self._socket = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        received = self._received
        if not received:
            return self._socket.readinto(buffer)
        count = min(len(buffer), len(received))
        buffer[:count] = received[:count]
        self._received = received[count:]
        return count

    def close(self) -> None:
        if not self.closed:
            self._socket.close()
        super().close()


class _HandOver:
    """What ``http.client.HTTPResponse`` takes as its socket: it only calls ``makefile``."""

    def __init__(self, received: bytes, sock: socket.socket) -> None:
        self.received = received
        self.sock = sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Replay(self.received, self.sock))


def _handed_over(
    received: bytes, conn: Any, sock: socket.socket, pool: HTTPConnectionPool, method: str, url: str
) -> HTTPResponse:
    """urllib3's answer for an unusual one, read by ``http.client`` from ``received`` on,
    as urllib3's connection builds it: its body unread, the connection in its keeping."""
    original = http.client.HTTPResponse(
        cast(socket.socket, _HandOver(received, sock)), method=method
    )
    try:
        original.begin()
        headers = HTTPHeaderDict()
        for name, value in original.msg.items():
            headers.add(name, _FOLD.sub(" ", value) if "\r\n" in value else value)
        answer = HTTPResponse(
            body=original,
            headers=headers,
            status=original.status,
            version=original.version,
            version_string="HTTP/1.1",
            reason=original.reason,
            preload_content=False,
            decode_content=False,
            original_response=original,
            pool=pool,
            connection=conn,
            enforce_content_length=True,
            request_method=method,
            request_url=url,
            sock_shutdown=sock.shutdown,
        )
    except BaseException:
        original.close()  # lets the connection's socket close
        raise
    if original.will_close:
        conn.close()  # the answer keeps the socket until it is read, as http.client does
    return answer
