"""The only module that speaks HTTP: one pooled ``requests.Session`` per connection.

It owns authentication, the deadline of each call, retries with backoff and
the keep-alive pool; what an answer means is :mod:`kvpio_mapping.protocol`'s
business. Work that ``requests`` would repeat on every call (picking the
adapter, reading proxy and certificate settings from the environment, merging
the session's settings and headers, choosing the connection pool, parsing the
URL) is done once (see :class:`_Route`), and a call goes straight to the pool
of the session's adapter, as ``HTTPAdapter.send`` would send it: on an open
connection of that pool as bytes written once per route
(:class:`~kvpio_mapping.wire.Wire`), else through the pool's ``urlopen``.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, cast

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, cookiejar_from_dict, extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import Timeout

from . import protocol
from .errors import AuthenticationError, KvpioTimeoutError, TransportError
from .forks import reset_after_fork
from .wire import Answer, Wire

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT: Final = 30.0
"""Seconds one call may take, retries included."""
DEFAULT_RETRIES: Final = 8
CONNECT_TIMEOUT: Final = 3.05
MAX_PAUSE: Final = 1.0
"""The longest pause between two attempts: with the defaults the pauses add up to 4.5 s,
which rides out a server restart (0.4 to 3 s for ``kvpio serve``)."""
IDLE_LIMIT: Final = 2.0
"""A pooled connection idle longer than this is closed rather than reused: servers close
idle keep-alive connections (uvicorn after 5 s, Apache and Node after 5 s), and a request
sent as the server closes is lost without telling whether it was applied."""
RETRY_STATUSES: Final = frozenset({502, 503, 504})
USER_AGENT: Final = "kvpio-mapping/0.1"


def resolve_url(url: str | None) -> str:
    """``url``, else ``$KVPIO_URL``, else the local server's default address."""
    return (url or os.environ.get("KVPIO_URL") or DEFAULT_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    """``api_key``, else ``$KVPIO_APIKEY``, else the first line of ``~/.kvpio``."""
    if api_key:
        return api_key
    from_env = os.environ.get("KVPIO_APIKEY")
    if from_env:
        return from_env
    key_file = Path.home() / ".kvpio"
    if key_file.is_file():
        lines = key_file.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
    raise AuthenticationError(
        "no API key: pass api_key=, set KVPIO_APIKEY or put the key on the first line of ~/.kvpio"
    )


class _FreshConnection(HTTPConnection):
    """An HTTP connection the pool reuses only while it has been idle under IDLE_LIMIT."""

    answered_at: float | None = None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        response = super().getresponse(*args, **kwargs)
        self.answered_at = time.monotonic()
        return response

    @property
    def is_connected(self) -> bool:
        answered = self.answered_at
        if answered is not None and time.monotonic() - answered > IDLE_LIMIT:
            return False
        return super().is_connected


def _answered(conn: Any) -> None:
    """Note that ``conn`` answered now (the wire reads answers without ``getresponse``)."""
    if isinstance(conn, _FreshConnection):
        conn.answered_at = time.monotonic()


class _FreshHTTPSConnection(HTTPSConnection, _FreshConnection):
    """:class:`_FreshConnection` over TLS."""


class _FreshPool(HTTPConnectionPool):
    ConnectionCls = _FreshConnection


class _FreshHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _FreshHTTPSConnection


class _FreshAdapter(HTTPAdapter):
    """``requests``' adapter whose pools drop connections idle over IDLE_LIMIT."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _FreshPool, "https": _FreshHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {"http": _FreshPool, "https": _FreshHTTPSPool}
        return manager


_ADAPTER_STEPS: Final = (
    "get_connection_with_tls_context",
    "cert_verify",
    "request_url",
    "add_headers",
    "build_response",
)
"""The ``HTTPAdapter`` methods whose work a pooled call does itself: an adapter class
that overrides one of them (or ``send``) gets the full ``session.send``."""


def _requests_own(cls: type, name: str) -> bool:
    """Whether ``cls.name`` is the method ``requests`` defines: neither a subclass's
    override nor a test's patch of it (``responses``, ``mock.patch``), whenever made."""
    method = getattr(cls, name, None)
    return getattr(method, "__module__", None) in _REQUESTS_MODULES and getattr(
        method, "__qualname__", None
    ) in (f"HTTPAdapter.{name}", f"Session.{name}")


_REQUESTS_MODULES: Final = frozenset({"requests.adapters", "requests.sessions"})


def _settings(session: requests.Session) -> tuple[Any, ...]:
    """What a :class:`_Route` is worked out from, to tell when the session changed."""
    return (
        tuple(session.adapters.items()),
        tuple(session.proxies.items()),
        session.verify,
        session.cert,
        session.trust_env,
        tuple(session.headers.items()),
    )


_BLANK: Final = {
    name: value
    for name, value in vars(requests.Response()).items()
    if name not in ("cookies", "history", "headers")
}


class _PooledResponse(requests.Response):
    """A ``requests.Response`` whose cookie jar is made when first asked for: building
    one per answer was half of ``Response()``'s cost, and most answers set no cookie."""

    def __init__(self) -> None:
        self.__dict__.update(_BLANK)
        self.history = []

    @property
    def cookies(self) -> RequestsCookieJar:
        """The cookies the answer set (an empty jar if none)."""
        jar: RequestsCookieJar | None = self.__dict__.get("_cookies")
        if jar is None:
            jar = self.__dict__["_cookies"] = cookiejar_from_dict({})  # type: ignore[no-untyped-call]
        return jar

    @cookies.setter
    def cookies(self, jar: RequestsCookieJar) -> None:
        self.__dict__["_cookies"] = jar


class _Route:
    """How calls to one base URL go out through one session, worked out once.

    ``requests`` works all this out again on every call, although it changes
    only when the session's settings do: so a call compares those settings
    with the ones its route was worked out from (a few microseconds) and
    works the route out again if any changed. The environment (proxy
    variables, ``REQUESTS_CA_BUNDLE``) is read when the route is worked out.
    """

    def __init__(self, session: requests.Session, base: str, fixed: Mapping[str, str]) -> None:
        self.seen = _settings(session)
        self.session = session
        self.base = base
        settings = session.merge_environment_settings(base, {}, None, None, None)
        self.proxies: dict[str, str] = dict(settings["proxies"])
        self.verify: bool | str | None = settings["verify"]
        self.cert: Any = settings["cert"]
        merged: CaseInsensitiveDict[Any] = CaseInsensitiveDict(session.headers)
        merged.update(fixed)
        # requests drops a session header set to None; the rest keep their spelling
        self.headers = {name: value for name, value in merged.items() if value is not None}
        self.names = {"content-type": "Content-Type", "content-length": "Content-Length"}
        self.names.update((name.lower(), name) for name in self.headers)
        self.adapter = session.get_adapter(base)
        self.pooled = isinstance(self.adapter, HTTPAdapter) and all(
            _requests_own(type(self.adapter), step) for step in _ADAPTER_STEPS
        )
        self._pool: Any = None
        self.prefix = ""
        self.wire: Wire | None = None

    def name(self, header: str) -> str:
        """``header`` as the merged headers spell it, so a call replaces rather than repeats it."""
        return self.names.get(header.lower(), header)

    def pool(self) -> HTTPConnectionPool:
        """The adapter's pool for the base URL (through the proxy, if one applies), and the
        prefix of each call's URL in it, found as ``HTTPAdapter.send`` finds them."""
        pool = self._pool
        if pool is None:
            probe = requests.PreparedRequest()
            probe.method = "GET"
            probe.url = self.base
            adapter = cast(HTTPAdapter, self.adapter)
            try:
                pool = adapter.get_connection_with_tls_context(
                    probe, self.verify, proxies=self.proxies, cert=self.cert
                )
            except u3.LocationValueError as exc:
                raise requests.exceptions.InvalidURL(exc) from None
            adapter.cert_verify(pool, self.base, self.verify, self.cert)  # type: ignore[no-untyped-call]
            self.prefix = adapter.request_url(probe, self.proxies)
            self.wire = Wire.of(
                cast(HTTPConnectionPool, pool), self.prefix, self.headers, _answered
            )
            self._pool = pool
        return cast(HTTPConnectionPool, pool)

    def forget_pool(self) -> None:
        """Find the pool again at the next call (the session closed it, or let it go)."""
        self._pool = None

    def merged(
        self, method: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> dict[str, str]:
        """The headers of one call: this route's, then the call's own and the body's."""
        sent = self.headers.copy()
        if headers:
            for name, value in headers.items():
                sent[self.name(name)] = value
        if body is not None:
            sent[self.name("Content-Type")] = "application/json"
            sent[self.name("Content-Length")] = str(len(body))
        elif method in ("POST", "PUT"):
            sent[self.name("Content-Length")] = "0"
        return sent

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        connect: float,
        read: float,
    ) -> requests.Response:
        """Send one request through the pool and read the whole answer, as ``session.send``
        would with this route's settings, raising the same ``requests`` exceptions.

        On an open connection a plain request goes out on the :class:`Wire`;
        else (and for what the wire leaves to it) through ``urlopen``.
        """
        started = time.perf_counter()
        received: Answer | BaseHTTPResponse | None = None
        self.pool()
        wire = self.wire
        try:
            if wire is not None and (head := wire.head(method, target, body, headers)):
                try:
                    received = wire.send(method, target, head, body, connect, read)
                except u3.ClosedPoolError:
                    self.forget_pool()
            if received is None:
                merged = self.merged(method, body, headers)
                wait = Timeout(connect=connect, read=read)
                try:
                    received = self._urlopen(method, target, body, merged, wait)
                except u3.ClosedPoolError:
                    self.forget_pool()
                    received = self._urlopen(method, target, body, merged, wait)
        except (u3.HTTPError, OSError) as exc:
            raise _translated(exc, _as_requests_error) from exc
        response = _PooledResponse()
        response.status_code = received.status
        response.reason = received.reason  # type: ignore[assignment]
        response.url = self.base + target
        response.connection = cast(HTTPAdapter, self.adapter)
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        try:
            if type(received) is Answer:
                response.headers = CaseInsensitiveDict(received.headers)
                response.encoding = get_encoding_from_headers(response.headers)
                response._content = received.read()
            else:
                raw = cast(BaseHTTPResponse, received)
                # urllib3's headers are case-insensitive already: requests' copy is spared
                response.headers = raw.headers  # type: ignore[assignment]
                response.encoding = get_encoding_from_headers(raw.headers)
                response.raw = raw
                if "Set-Cookie" in raw.headers:
                    self._keep_cookies(response, method, self.merged(method, body, headers))
                response._content = raw.read(decode_content=True)
        except u3.HTTPError as exc:
            raise _translated(exc, _as_body_error) from exc
        response._content_consumed = True  # type: ignore[attr-defined]
        return response

    def _urlopen(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], wait: Timeout
    ) -> BaseHTTPResponse:
        adapter = cast(HTTPAdapter, self.adapter)
        return self.pool().urlopen(
            method,
            self.prefix + target,
            body=body,
            headers=headers,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=adapter.max_retries,
            timeout=wait,
            chunked=False,
        )

    def _keep_cookies(
        self, response: requests.Response, method: str, headers: dict[str, str]
    ) -> None:
        """Store the cookies an answer set, in it and in the session, as requests does
        (the session then sends them: its calls take the full path while it has any)."""
        request = requests.PreparedRequest()
        request.method = method
        request.url = response.url
        request.headers = CaseInsensitiveDict(headers)
        response.request = request
        extract_cookies_to_jar(response.cookies, request, response.raw)  # type: ignore[no-untyped-call]
        extract_cookies_to_jar(self.session.cookies, request, response.raw)  # type: ignore[no-untyped-call]


class Transport:
    """Sends requests to one server with one API key, over a keep-alive pool.

    ``session`` shares a ``requests.Session`` of the caller's: its settings
    and mounted adapters apply to every call, which goes straight to the
    adapter's pool unless the session has ``auth``, response hooks or
    cookies, or the adapter (or session) class has a ``send`` of its own;
    those calls go through ``session.send``. Safe to share between threads.
    After ``os.fork()`` the child opens its own connections; pickling keeps
    only the configuration.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.05,
        session: requests.Session | None = None,
        version: str = "v1",
    ) -> None:
        self.url = resolve_url(url)
        self.version = version
        self.api_key = resolve_api_key(api_key)
        self.timeout = check_timeout(timeout)
        self.retries = retries
        self.backoff = backoff
        self._own_session = session is None
        self._open(session)
        reset_after_fork(self)

    def _open(self, session: requests.Session | None) -> None:
        """Make the session (unless given one); the route is worked out at the first call."""
        if session is None:
            session = requests.Session()
            adapter = _FreshAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._streams: requests.Session | None = None
        self.base = f"{self.url}/{self.version}/"
        self._fixed = {
            "User-Agent": USER_AGENT,
            "Authorization": authorization(self.api_key),
            "Accept": "application/json, text/plain",
        }
        self._route: _Route | None = None

    def _current_route(self) -> _Route:
        """The route worked out from the session's settings as they are now."""
        route = self._route
        if route is None or route.seen != _settings(self.session):
            route = self._route = _Route(self.session, self.base, self._fixed)
        return route

    def _pooled(self, route: _Route) -> bool:
        """Whether a call may go straight to the adapter's pool: not when the session or
        its adapter does more than ``requests`` does by default (a ``send`` of its own,
        response hooks, ``session.auth``, cookies to send), which only ``session.send``
        does right."""
        session = self.session
        return (
            route.pooled
            and _requests_own(type(route.adapter), "send")
            and _requests_own(type(session), "send")
            and session.auth is None
            and not session.hooks.get("response")
            and not session.cookies
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "api_key": self.api_key,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "version": self.version,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _after_fork(self) -> None:
        """Drop the parent's pooled sockets: a forked child must not share them."""
        if self._own_session:
            self._open(None)
        self._streams = None

    def close(self) -> None:
        """Close pooled connections; the transport reopens them if used again (and reads
        the environment's settings again then)."""
        self.session.close()
        self._route = None
        if self._streams is not None:
            self._streams.close()

    def __repr__(self) -> str:
        return f"<Transport {self.url}>"

    def send(self, request: protocol.Request) -> requests.Response:
        """Send a request built by :mod:`kvpio_mapping.protocol`; see :meth:`request`."""
        return self.request(
            request.method,
            request.target,
            body=request.body,
            headers=request.headers,
            idempotent=request.idempotent,
        )

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send ``method`` to ``{url}/{version}/{target}`` and return the answer, any status.

        ``target`` is already percent-encoded and may carry a query string.
        The whole call, retries included, ends within ``timeout`` seconds.
        Connection failures and 502/503/504 are retried with exponential
        backoff when the request is idempotent (``idempotent``, by default
        :func:`kvpio_mapping.protocol.idempotent`); a failure before anything
        was sent is always retried. Raises :class:`TransportError` when no
        answer came.
        """
        deadline = time.monotonic() + self.timeout
        if idempotent is None:
            idempotent = protocol.idempotent(method, target)
        route = self._current_route()
        attempt = 0
        reached: requests.RequestException | None = None  # an attempt that may have been sent
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KvpioTimeoutError(
                    f"{self.url} did not answer {method} {target!r} within the timeout"
                    f" of {self.timeout:g} s"
                )
            try:
                if self._pooled(route):
                    connect = min(CONNECT_TIMEOUT, left)
                    response = route.send(method, target, body, headers, connect, left)
                else:
                    sent = route.merged(method, body, headers)
                    response = self._send_in_full(route, method, target, body, sent, left)
            except requests.Timeout as exc:
                if self._may_retry(attempt, deadline, idempotent or nothing_sent(exc)):
                    attempt += 1
                    continue
                raise KvpioTimeoutError(
                    f"{self.url} did not answer {method} {target!r} within the timeout"
                    f" of {self.timeout:g} s: {exc}"
                ) from exc
            except requests.RequestException as exc:
                unsent = nothing_sent(exc)
                if not unsent:
                    reached = exc
                if self._may_retry(attempt, deadline, idempotent or unsent):
                    attempt += 1
                    continue
                if time.monotonic() >= deadline:
                    raise KvpioTimeoutError(
                        f"{self.url} did not answer {method} {target!r} within the timeout"
                        f" of {self.timeout:g} s: {exc}"
                    ) from exc
                # Caused by an attempt that may have reached the server, if one did: a retry
                # that could not connect does not mean that nothing was done.
                raise TransportError(f"cannot reach the server at {self.url}: {exc}") from (
                    reached or exc
                )
            if response.status_code in RETRY_STATUSES and self._may_retry(
                attempt, deadline, idempotent, retry_after(response)
            ):
                attempt += 1
                continue
            return response

    def _send_in_full(
        self,
        route: _Route,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        left: float,
    ) -> requests.Response:
        """Send through ``session.send``, for a session or adapter that does more than
        ``requests`` does by default: its hooks run, ``session.auth`` is applied (after
        the API key's header, so it may replace it, as in ``requests``), its cookies go out."""
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = self.base + target
        prepared.headers = CaseInsensitiveDict(headers)
        prepared.body = body
        prepared.prepare_cookies(self.session.cookies)
        prepared.hooks = {"response": list(self.session.hooks.get("response", ()))}
        if self.session.auth is not None:
            prepared.prepare_auth(self.session.auth)
        return self.session.send(
            prepared,
            allow_redirects=False,
            stream=False,
            proxies=route.proxies,
            verify=route.verify,
            cert=route.cert,
            timeout=(min(CONNECT_TIMEOUT, left), left),
        )

    def stream(self, request: protocol.Request, read_timeout: float) -> requests.Response:
        """Send ``request`` (a long-lived GET) and return the answer, its body read as it
        comes; no retries.

        Streams use a session of their own, so one open stream never holds a
        connection the pooled requests need. Raises :class:`TransportError`
        when no answer came (the caller decides when to try again).
        """
        if self._streams is None:
            self._streams = requests.Session()
        route = self._current_route()
        sent: CaseInsensitiveDict[str] = CaseInsensitiveDict(route.headers)
        sent.update(request.headers or {})
        prepared = requests.Request(request.method, self.base + request.target, headers=sent)
        try:
            return self._streams.send(
                prepared.prepare(),
                allow_redirects=False,
                stream=True,
                proxies=route.proxies,
                verify=route.verify,
                cert=route.cert,
                timeout=(min(CONNECT_TIMEOUT, self.timeout), read_timeout),
            )
        except requests.RequestException as exc:
            raise TransportError(f"cannot reach the server at {self.url}: {exc}") from exc

    def _may_retry(
        self, attempt: int, deadline: float, safe: bool, wait: float | None = None
    ) -> bool:
        """Pause before attempt ``attempt + 1`` and say yes, if it is safe and time is left."""
        pause = retry_pause(self, attempt, deadline, safe, wait)
        if pause is None:
            return False
        time.sleep(pause)
        return True


def retry_pause(
    settings: Any, attempt: int, deadline: float, safe: bool, wait: float | None = None
) -> float | None:
    """How long to pause before attempt ``attempt + 1``, or None if it must not be made.

    The one retry rule of both transports: only a ``safe`` request, at most
    ``settings.retries`` times, exponential from ``settings.backoff`` up to
    MAX_PAUSE (or the server's ``wait``), and never past the ``deadline``.
    """
    if not safe or attempt >= settings.retries:
        return None
    pause = min(settings.backoff * 2**attempt, MAX_PAUSE) if wait is None else wait
    if time.monotonic() + pause >= deadline:
        return None
    return float(pause)


def check_timeout(timeout: object) -> float:
    """``timeout`` as seconds, refused unless a number above 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be above 0 seconds, not {timeout!r}")
    return float(timeout)


def retry_after(response: protocol.Answer) -> float | None:
    """The seconds of a ``Retry-After`` header, if it gives a number (at most MAX_PAUSE)."""
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), MAX_PAUSE)
    except ValueError:
        return None


def authorization(api_key: str) -> str:
    """The ``Authorization`` header of ``api_key`` (HTTP Basic, the key as user name)."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def _translated(exc: Exception, translate: Callable[[Exception], Exception]) -> Exception:
    """``translate(exc)``, or ``exc`` itself raised again where it is left as it is."""
    translated = translate(exc)
    if translated is exc:
        raise exc
    return translated


def _as_requests_error(exc: Exception) -> Exception:
    """The exception ``HTTPAdapter.send`` raises for ``exc`` from ``urlopen`` (``exc``
    itself where it lets it through), so a pooled call fails exactly as a full one."""
    if isinstance(exc, u3.ProtocolError | OSError):
        return requests.ConnectionError(exc)
    if isinstance(exc, u3.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, u3.ConnectTimeoutError) and not isinstance(
            reason, u3.NewConnectionError
        ):
            return requests.ConnectTimeout(exc)
        if isinstance(reason, u3.ResponseError):
            return requests.exceptions.RetryError(exc)
        if isinstance(reason, u3.ProxyError):
            return requests.exceptions.ProxyError(exc)
        if isinstance(reason, u3.SSLError):
            return requests.exceptions.SSLError(exc)
        return requests.ConnectionError(exc)
    if isinstance(exc, u3.ClosedPoolError):
        return requests.ConnectionError(exc)
    if isinstance(exc, u3.ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.ReadTimeout(exc)
    if isinstance(exc, u3.InvalidHeader):
        return requests.exceptions.InvalidHeader(exc)
    return exc


def _as_body_error(exc: Exception) -> Exception:
    """The exception ``requests`` raises for ``exc`` while reading an answer's body."""
    if isinstance(exc, u3.ProtocolError):
        return requests.exceptions.ChunkedEncodingError(exc)
    if isinstance(exc, u3.DecodeError):
        return requests.exceptions.ContentDecodingError(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.ConnectionError(exc)
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError(exc)
    return exc


def nothing_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before any byte reached the server (safe to resend)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in ("NewConnectionError", "NameResolutionError")
