"""The only module that speaks HTTP: one pooled ``requests.Session`` per connection.

It owns authentication, the deadline of each call, retries with backoff and
the keep-alive pool; what an answer means is :mod:`kvpio_mapping.protocol`'s
business. Work that
``requests`` would repeat on every call (reading proxy settings from the
environment, merging session settings, building the auth header, parsing the
URL) is done once, when the transport is made.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from . import protocol
from .errors import AuthenticationError, KvpioTimeoutError, TransportError
from .forks import reset_after_fork

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


class Transport:
    """Sends requests to one server with one API key, over a keep-alive pool.

    Safe to share between threads. After ``os.fork()`` the child opens its
    own connections; pickling keeps only the configuration.
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
        """Make the session and everything derived from it and the environment, once."""
        if session is None:
            session = requests.Session()
            adapter = _FreshAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self._streams: requests.Session | None = None
        self.base = f"{self.url}/{self.version}/"
        settings = self.session.merge_environment_settings(self.base, {}, None, None, None)
        self._send_options: dict[str, Any] = {
            "allow_redirects": False,
            "proxies": settings["proxies"],
            "verify": settings["verify"],
            "cert": settings["cert"],
            "stream": False,
        }
        headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(self.session.headers)
        headers["User-Agent"] = USER_AGENT
        headers["Authorization"] = authorization(self.api_key)
        headers["Accept"] = "application/json, text/plain"
        self._headers = headers

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
        """Close pooled connections; the transport reopens them if used again."""
        self.session.close()
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
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = self.base + target
        prepared.headers = self._headers.copy()  # type: ignore[assignment]
        if headers:
            prepared.headers.update(headers)
        if body is not None:
            prepared.headers["Content-Type"] = "application/json"
            prepared.headers["Content-Length"] = str(len(body))
        elif method in ("POST", "PUT"):
            prepared.headers["Content-Length"] = "0"
        prepared.body = body
        prepared.prepare_cookies(self.session.cookies)
        prepared.hooks = {"response": []}
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            options = self._send_options | {"timeout": (min(CONNECT_TIMEOUT, left), left)}
            try:
                response = self.session.send(prepared, **options)
            except requests.Timeout as exc:
                if self._may_retry(attempt, deadline, idempotent or _nothing_sent(exc)):
                    attempt += 1
                    continue
                raise KvpioTimeoutError(
                    f"{self.url} did not answer {method} {target!r} within the timeout"
                    f" of {self.timeout:g} s: {exc}"
                ) from exc
            except requests.RequestException as exc:
                if self._may_retry(attempt, deadline, idempotent or _nothing_sent(exc)):
                    attempt += 1
                    continue
                if time.monotonic() >= deadline:
                    raise KvpioTimeoutError(
                        f"{self.url} did not answer {method} {target!r} within the timeout"
                        f" of {self.timeout:g} s: {exc}"
                    ) from exc
                raise TransportError(f"cannot reach the server at {self.url}: {exc}") from exc
            if response.status_code in RETRY_STATUSES and self._may_retry(
                attempt, deadline, idempotent, retry_after(response)
            ):
                attempt += 1
                continue
            return response

    def stream(self, request: protocol.Request, read_timeout: float) -> requests.Response:
        """Send ``request`` (a long-lived GET) and return the answer, its body read as it
        comes; no retries.

        Streams use a session of their own, so one open stream never holds a
        connection the pooled requests need. Raises :class:`TransportError`
        when no answer came (the caller decides when to try again).
        """
        if self._streams is None:
            self._streams = requests.Session()
        sent = self._headers.copy()
        sent.update(request.headers or {})
        options = dict(self._send_options, stream=True)
        options["timeout"] = (min(CONNECT_TIMEOUT, self.timeout), read_timeout)
        prepared = requests.Request(request.method, self.base + request.target, headers=sent)
        try:
            return self._streams.send(prepared.prepare(), **options)
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


def _nothing_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before any byte reached the server (safe to resend)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in ("NewConnectionError", "NameResolutionError")
