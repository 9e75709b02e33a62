"""The wire: a pooled call on an open keep-alive connection, sent as a head written once per
route and read straight from the socket, behaves as ``urlopen`` and ``requests`` do.

Against the real server: the wire carries the common calls, threads share it.
Against a loopback server of this module's that keeps the exact bytes of each
request: the wire sends what urllib3 sends. Against ``tests/faults.py`` for
answers a real server never gives (chunked, oddly framed, garbled, cut short,
reset, hung): each is compared with what ``requests.Session().get`` makes of
the same answer, the same content or the same exception.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import urllib3.exceptions as u3
from faults import Fault, fault_server
from urllib3 import HTTPConnectionPool

from kvpio_mapping import KVBucket, KvpioTimeoutError, TransportError
from kvpio_mapping.testing import run_server
from kvpio_mapping.transport import Transport
from kvpio_mapping.wire import Wire

TARGET = "bucket/k"
ANSWER_LIMIT = 5.0
"""Seconds the recording server waits for a request on a kept-alive connection."""


@pytest.fixture
def urlopened(monkeypatch) -> list[str]:
    """The methods of the calls that go through a pool's ``urlopen`` from now on (the
    rest go out on the wire)."""
    calls: list[str] = []
    urlopen = HTTPConnectionPool.urlopen

    def counted(pool: HTTPConnectionPool, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return urlopen(pool, method, *args, **kwargs)

    monkeypatch.setattr(HTTPConnectionPool, "urlopen", counted)
    return calls


# the real server


def test_calls_go_out_on_the_wire_from_the_first(kvpio_account, urlopened):
    transport = Transport(kvpio_account.url, kvpio_account.api_key)
    bucket = KVBucket(transport=transport, ttl=0)
    bucket["k"] = {"a": [1, 2]}
    for _ in range(3):
        assert bucket["k"] == {"a": [1, 2]}
    assert bucket.pop("k") == {"a": [1, 2]}
    assert "k" not in bucket
    assert urlopened == []  # the first call opened the connection for the wire too


def test_threads_sharing_a_transport_each_get_their_own_answers(kvpio_account):
    transport = Transport(kvpio_account.url, kvpio_account.api_key)
    bucket = KVBucket(transport=transport, ttl=0)
    threads, rounds = 8, 30
    wrong: list[tuple[int, Any]] = []

    def work(number: int) -> None:
        for turn in range(rounds):
            value = {"thread": number, "turn": turn}
            bucket[f"t{number}"] = value
            found = bucket[f"t{number}"]
            if found != value:
                wrong.append((number, found))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers)
    assert wrong == []
    pool = transport._current_route().pool()
    assert pool.num_requests == threads * rounds * 2
    assert pool.num_connections <= threads


@pytest.mark.slow
def test_tls_calls_go_out_on_the_wire_only_when_verified(tmp_path, monkeypatch, urlopened):
    from certs import self_signed

    cert, key = self_signed(tmp_path)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    options = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with run_server(db=tmp_path / "kv.sqlite3", options=options) as server:
        verified = requests.Session()
        verified.verify = str(cert)
        transport = Transport(server.url, server.api_key, session=verified)
        bucket = KVBucket(transport=transport, ttl=0)
        bucket["k"] = 1
        assert [bucket["k"] for _ in range(3)] == [1, 1, 1]
        assert urlopened == ["POST"]
        # the server stops at once only when no connection is left open
        transport.close()
        unverified = requests.Session()
        unverified.verify = False
        transport = Transport(server.url, server.api_key, session=unverified)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            assert [KVBucket(transport=transport, ttl=0)["k"] for _ in range(3)] == [1, 1, 1]
        transport.close()
        assert urlopened == ["POST"] + ["GET"] * 3  # urllib3 warns of each unverified call
        insecure = [w for w in warned if issubclass(w.category, u3.InsecureRequestWarning)]
        assert len(insecure) == 3


# the bytes on the wire


class Recorded:
    """The exact bytes of each request a :func:`recording_server` received."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.url = ""


def _serve_connection(connection: socket.socket, recorded: Recorded) -> None:
    connection.settimeout(ANSWER_LIMIT)
    data = b""
    with connection:
        while True:
            while b"\r\n\r\n" not in data:
                try:
                    more = connection.recv(65536)
                except OSError:
                    return
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                more = connection.recv(65536)
                if not more:
                    return
                data += more
            recorded.requests.append(head + b"\r\n\r\n" + data[:length])
            data = data[length:]
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


@contextmanager
def recording_server() -> Iterator[Recorded]:
    """A loopback HTTP/1.1 server keeping each request's bytes; it answers ``{}``."""
    recorded = Recorded()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    recorded.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve_connection, args=(connection, recorded)).start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield recorded
    finally:
        stop.set()
        acceptor.join(ANSWER_LIMIT)
        listener.close()


CALLS = [
    ("GET", "bucket/k", None, None, True),
    ("GET", "bucket/a/1?keys=true", None, {"If-None-Match": '"3a5f"'}, True),
    ("POST", "bucket/k", b'{"a":[1,2]}', None, True),
    ("POST", "bucket/k?op=increment", b"1", {"If-Match": '"x"'}, True),
    ("POST", "bucket/k", None, None, True),
    ("DELETE", "bucket/k?pop=true", None, None, True),
    ("POST", "bucket/k", b"x" * 100_000, None, True),
    # a call's header replacing one of the route's goes through urlopen
    ("GET", "account/", None, {"Authorization": "Basic Og=="}, False),
]


@pytest.fixture
def first_through_urlopen(monkeypatch) -> None:
    """The first call goes through ``urlopen`` (which opens the connection), the rest as
    they would."""
    head = Wire.head
    calls = 0

    def later(wire: Wire, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return None if calls == 1 else head(wire, *args)

    monkeypatch.setattr(Wire, "head", later)


@pytest.mark.parametrize(("method", "target", "body", "headers", "wired"), CALLS)
def test_the_wire_sends_the_bytes_urlopen_sends(
    method, target, body, headers, wired, urlopened, first_through_urlopen
):
    with recording_server() as server:
        session = requests.Session()
        session.headers["X-Trace"] = "abc"
        session.headers["Accept-Encoding"] = None  # requests leaves it out
        transport = Transport(server.url, "key", session=session)
        for _ in range(2):
            answer = transport.request(method, target, body=body, headers=headers)
            assert answer.json() == {}
        assert urlopened == ([method] if wired else [method, method])
        first, second = server.requests
        assert second == first
        assert b"X-Trace: abc\r\n" in first
        assert b"Accept-Encoding: identity\r\n" in first


@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("bucket/a b", b"GET /v1/bucket/a%20b HTTP/1.1"),
        ("bucket/%2f", b"GET /v1/bucket/%2F HTTP/1.1"),
    ],
)
def test_a_target_urllib3_would_encode_is_sent_encoded(target, line):
    with recording_server() as server:
        transport = Transport(server.url, "key")
        for _ in range(2):
            transport.request("GET", target)
        assert [request.split(b"\r\n")[0] for request in server.requests] == [line, line]


def test_a_session_header_http_client_refuses_is_refused_on_every_call():
    with recording_server() as server:
        session = requests.Session()
        transport = Transport(server.url, "key", session=session)
        transport.request("GET", TARGET)
        session.headers["X-Bad"] = "a\r\nb"
        for _ in range(2):
            with pytest.raises(ValueError, match="Invalid header"):
                transport.request("GET", TARGET)


# answers a real server never gives, read as requests reads them


def _outcome(call: Any) -> tuple[Any, ...]:
    """``(status, content, headers)`` of a call's answer, or the type of its error and
    the kind of urllib3 error that caused it (the transport's failure is told by its cause)."""
    try:
        answer = call()
    except TransportError as exc:
        error: BaseException = exc.__cause__ or exc
    except requests.RequestException as exc:
        error = exc
    else:
        headers = {name.lower(): value for name, value in answer.headers.items()}
        return answer.status_code, answer.content, headers
    inner = error.args[0] if error.args else None
    kinds = (u3.ProtocolError, u3.ReadTimeoutError, u3.MaxRetryError, u3.InvalidHeader)
    return type(error), next((kind for kind in kinds if isinstance(inner, kind)), type(inner))


def _warm(fault: Fault) -> Transport:
    """A transport with an open connection to ``fault``, so its next call goes on the wire."""
    transport = Transport(fault.url, "key", retries=0, timeout=ANSWER_LIMIT)
    transport.request("GET", TARGET)
    return transport


def _as_requests_reads(fault: Fault) -> tuple[Any, ...]:
    with requests.Session() as session:
        return _outcome(lambda: session.get(f"{fault.url}/v1/{TARGET}"))


BIG = b'"' + b"x" * 2**20 + b'"'
GZIPPED = gzip.compress(b"[]", mtime=0)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
ANSWERS = {
    "chunked, in pieces, with an extension and a trailer": [
        CHUNKED + b"3;note=1\r\n",
        b'"va\r\n4\r\nlue"\r\n',
        b"0\r\nX-Trailer: 1\r\n\r\n",
    ],
    "a length, in pieces": [HEAD + b"Content-Length: 7\r\n\r\n", b'"va', b'lue"'],
    "a megabyte with a length": [HEAD + b"Content-Length: %d\r\n\r\n%b" % (len(BIG), BIG)],
    "a megabyte in two chunks": [
        CHUNKED + b"%x\r\n%b\r\n" % (len(BIG) - 9, BIG[:-9]),
        b"9\r\n%b\r\n0\r\n\r\n" % BIG[-9:],
    ],
    "repeated fields": [HEAD + b"X-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\n[]"],
    "an interim 100": [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"Content-Length: 2\r\n\r\n[]"],
    "HTTP/1.0": [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]"],
    "gzip": [
        HEAD + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(GZIPPED), GZIPPED)
    ],
    "a folded field": [HEAD + b"X-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\n[]"],
    "a 204": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    "a 304 with a length": [b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\nContent-Length: 7\r\n\r\n'],
    "a reason in latin-1": [b"HTTP/1.1 200 \xe7a va\r\nContent-Length: 2\r\n\r\n[]"],
    "no reason": [b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n[]"],
    "bare line feeds": [b"HTTP/1.1 200 OK\nContent-Length: 2\n\n[]"],
    "a garbled status line": [b"HTTP/1.1 OK\r\n\r\n"],
    "not HTTP": [b"SSH-2.0-OpenSSH_9.6\r\n"],
    "a header line over 64 KiB": [HEAD + b"X-Long: " + b"x" * 70000 + b"\r\n\r\n"],
    "a bad chunk size": [CHUNKED + b"zz\r\nvalue\r\n0\r\n\r\n"],
    "conflicting lengths": [HEAD + b"Content-Length: 2, 3\r\n\r\n[]"],
    "both a length and chunks": [
        HEAD + b"Content-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
    ],
}
CLOSING = {
    "up to the close": [HEAD + b"\r\n", b'"value"'],
    "a length, then the close": [HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\n[]"],
    "cut short": [HEAD + b"Content-Length: 70\r\n\r\n", b'"value'],
    "chunks cut short": [CHUNKED + b"10\r\n", b'"val'],
    "chunks without their end": [CHUNKED + b"2\r\n[]\r\n"],
    "a head cut short": [b"HTTP/1.1 200 OK\r\nContent-Le"],
    "nothing": [],
    "an unreadable length": [HEAD + b"Content-Length: seven\r\n\r\n", b"[]"],
    "a Set-Cookie": [HEAD + b"Set-Cookie: route=b2; Path=/\r\nContent-Length: 2\r\n\r\n[]"],
}


@pytest.mark.parametrize(
    ("pieces", "close"),
    [*((pieces, False) for pieces in ANSWERS.values()), *((p, True) for p in CLOSING.values())],
    ids=[*ANSWERS, *CLOSING],
)
def test_an_answer_reads_as_requests_reads_it(pieces, close):
    with fault_server() as fault:
        transport = _warm(fault)
        fault.answer_raw(*pieces, close=close)
        expected = _as_requests_reads(fault)
        assert _outcome(lambda: transport.request("GET", TARGET)) == expected


@pytest.mark.parametrize("pieces", list(ANSWERS.values()), ids=list(ANSWERS))
def test_after_an_answer_that_leaves_the_connection_open_the_next_calls_are_answered(pieces):
    with fault_server() as fault:
        transport = _warm(fault)
        fault.answer_raw(*pieces)
        first = _outcome(lambda: transport.request("GET", TARGET))
        assert _outcome(lambda: transport.request("GET", TARGET)) == first
        fault.raw = None
        assert transport.request("GET", TARGET).json() == "value"


@pytest.mark.parametrize(
    ("pieces", "close", "reused"),
    [
        ([HEAD + b"Content-Length: 2\r\n\r\n[]"], False, True),
        ([HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\n[]"], False, False),
        ([HEAD + b"Content-Length: 2\r\n\r\n[]extra"], False, False),
        ([HEAD + b"Content-Length: 7\r\n\r\n", b'"val'], True, False),
    ],
    ids=["kept alive", "Connection: close", "more than its length", "cut short"],
)
def test_a_connection_is_reused_only_after_a_whole_answer_that_keeps_it_open(pieces, close, reused):
    with fault_server() as fault:
        transport = _warm(fault)
        fault.answer_raw(*pieces, close=close)
        _outcome(lambda: transport.request("GET", TARGET))
        fault.raw = None
        transport.request("GET", TARGET)
        assert fault.connections == (1 if reused else 2)


def test_a_cookie_an_answer_on_the_wire_sets_goes_out_with_the_next_calls():
    with fault_server() as fault:
        session = requests.Session()
        transport = Transport(fault.url, "key", session=session)
        transport.request("GET", TARGET)
        fault.answer_raw(HEAD + b"Set-Cookie: route=b2; Path=/\r\nContent-Length: 2\r\n\r\n[]")
        assert transport.request("GET", TARGET).cookies.get("route") == "b2"
        assert session.cookies.get("route") == "b2"


# failures on the wire: timeouts, resets, stale connections


def test_a_hang_on_an_open_connection_is_given_up_on_at_the_timeout():
    with fault_server() as fault:
        timeout = 0.5
        bucket = KVBucket(fault.url, "key", timeout=timeout, ttl=0)
        assert bucket["warm"] == "value"
        fault.hang = True
        started = time.monotonic()
        with pytest.raises(KvpioTimeoutError) as raised:
            bucket["k"]
        assert time.monotonic() - started < ANSWER_LIMIT
        assert isinstance(raised.value.__cause__, requests.ReadTimeout)
        assert len(fault.requests) == 2


def test_a_reset_of_an_idle_connection_is_retried_for_a_read_and_not_for_a_pop():
    with fault_server() as fault:
        fault.reset_idle_after = 0.2  # under IDLE_LIMIT: the client reuses the connection
        bucket = KVBucket(transport=Transport(fault.url, "key", backoff=0), ttl=0)
        assert bucket["warm"] == "value"
        time.sleep(0.3)
        assert bucket["k"] == "value"
        assert fault.resets == 1
        time.sleep(0.3)
        with pytest.raises(TransportError) as raised:
            bucket.pop("k")
        assert isinstance(raised.value.__cause__, requests.ConnectionError)
        assert fault.resets == 2
        assert [method for method, _ in fault.requests] == ["GET", "GET"]


def test_a_connection_the_server_closed_is_not_used_again():
    with fault_server() as fault:
        bucket = KVBucket(transport=Transport(fault.url, "key"), ttl=0)
        fault.answer_raw(HEAD + b"Content-Length: 7\r\n\r\n" + b'"value"', close=True)
        assert bucket["warm"] == "value"  # the server closed without saying so
        deadline = time.monotonic() + ANSWER_LIMIT
        while fault.closed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bucket.pop("k") == "value"
        assert [method for method, _ in fault.requests] == ["GET", "DELETE"]
        assert fault.connections == 2
