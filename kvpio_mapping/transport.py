"""The only module that speaks HTTP: one pooled ``requests.Session`` per connection.

It owns authentication, timeouts, retries with backoff and the mapping of
answers to the exceptions of :mod:`kvpio_mapping.errors`. Work that
``requests`` would repeat on every call (reading proxy settings from the
environment, merging session settings, building the auth header, parsing the
URL) is done once, when the transport is made.
"""

from __future__ import annotations

import base64
import os
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import requests
from requests.structures import CaseInsensitiveDict

from .errors import (
    AuthenticationError,
    ConflictError,
    KvpioTimeoutError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RequestError,
    ServerError,
    TemplateRenderError,
    TransportError,
)

DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT: Final = (3.05, 30.0)
RETRY_STATUSES: Final = frozenset({502, 503, 504})
USER_AGENT: Final = "kvpio-mapping/0.1"

Timeout = float | tuple[float, float]

_live: weakref.WeakSet[Transport] = weakref.WeakSet()


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
        timeout: Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.05,
        session: requests.Session | None = None,
        version: str = "v1",
    ) -> None:
        self.url = resolve_url(url)
        self.version = version
        self.api_key = resolve_api_key(api_key)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._own_session = session is None
        self._open(session)
        _live.add(self)

    def _open(self, session: requests.Session | None) -> None:
        """Make the session and everything derived from it and the environment, once."""
        self.session = session if session is not None else requests.Session()
        self.base = f"{self.url}/{self.version}/"
        settings = self.session.merge_environment_settings(self.base, {}, None, None, None)
        self._send_options: dict[str, Any] = {
            "timeout": self.timeout,
            "allow_redirects": False,
            "proxies": settings["proxies"],
            "verify": settings["verify"],
            "cert": settings["cert"],
            "stream": False,
        }
        token = base64.b64encode(f"{self.api_key}:".encode()).decode()
        headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(self.session.headers)
        headers["User-Agent"] = USER_AGENT
        headers["Authorization"] = f"Basic {token}"
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

    def close(self) -> None:
        """Close pooled connections; the transport reopens them if used again."""
        self.session.close()

    def __repr__(self) -> str:
        return f"<Transport {self.url}>"

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> requests.Response:
        """Send ``method`` to ``{url}/{version}/{target}`` and return the answer, any status.

        ``target`` is already percent-encoded and may carry a query string.
        Connection failures and 502/503/504 are retried with exponential
        backoff when ``idempotent`` (a failure before anything was sent is
        always retried). Raises :class:`TransportError` when no answer came.
        """
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
        prepared.hooks = {"response": []}
        attempt = 0
        while True:
            try:
                response = self.session.send(prepared, **self._send_options)
            except requests.Timeout as exc:
                if attempt < self.retries and (idempotent or _nothing_sent(exc)):
                    attempt = self._pause(attempt)
                    continue
                raise KvpioTimeoutError(
                    f"{self.url} did not answer {method} {target!r} in time: {exc}"
                ) from exc
            except requests.RequestException as exc:
                if attempt < self.retries and (idempotent or _nothing_sent(exc)):
                    attempt = self._pause(attempt)
                    continue
                raise TransportError(f"cannot reach the server at {self.url}: {exc}") from exc
            if response.status_code in RETRY_STATUSES and idempotent and attempt < self.retries:
                attempt = self._pause(attempt)
                continue
            return response

    def _pause(self, attempt: int) -> int:
        time.sleep(min(self.backoff * 2**attempt, 2.0))
        return attempt + 1


def _nothing_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before any byte reached the server (safe to resend)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in ("NewConnectionError", "NameResolutionError")


def raise_for_status(response: requests.Response) -> None:
    """Turn a non-2xx/304 answer into the matching exception of :mod:`kvpio_mapping.errors`."""
    status = response.status_code
    if status < 400:
        return
    message = _error_message(response)
    if status == 404:
        raise AuthenticationError(f"the server does not know this API key: {message}")
    if status == 409:
        raise ConflictError(message, status)
    if status == 412:
        raise PreconditionFailedError(message, status)
    if status == 413:
        raise PayloadTooLargeError(message, status)
    if status == 422:
        raise TemplateRenderError(message, status)
    if status < 500:
        raise RequestError(message, status)
    raise ServerError(f"the server failed with HTTP {status}: {message}", status)


def _error_message(response: requests.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200] or response.reason or "no message"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return response.text[:200]


def _reset_after_fork() -> None:
    for transport in list(_live):
        transport._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
