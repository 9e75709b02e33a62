"""The asyncio counterpart of :mod:`kvpio_mapping.transport`, on ``httpx.AsyncClient``.

The only module that imports ``httpx`` (the ``async`` extra). It keeps the
blocking transport's rules: the same configuration and defaults, one
deadline per call with retries included, the same retry rule
(:func:`~kvpio_mapping.transport.retry_pause`) and the same idle limit on
pooled connections; pauses are ``asyncio.sleep``, so the event loop runs on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

import httpx

from . import protocol
from .errors import KvpioTimeoutError, TransportError
from .forks import reset_after_fork
from .transport import (
    CONNECT_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    IDLE_LIMIT,
    RETRY_STATUSES,
    USER_AGENT,
    authorization,
    check_timeout,
    resolve_api_key,
    resolve_url,
    retry_after,
    retry_pause,
)

MAX_CONNECTIONS: Final = 100
"""Connections the pool opens to the server at most, and keeps while they stay fresh: a
batch of concurrent calls reuses the connections the previous batch opened."""
MAX_STREAMS: Final = 100
"""Change-feed streams open at once at most (the server allows 100 per account and worker)."""
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures before any byte of the request reached the server (safe to resend)."""


class AsyncTransport:
    """Sends requests to one server with one API key, over an ``httpx.AsyncClient`` pool.

    Use it from one event loop; pickling keeps only the configuration, and a
    forked child opens its own connections.
    ``client`` shares an ``httpx.AsyncClient`` of the caller's (not closed by
    :meth:`aclose`).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.05,
        client: httpx.AsyncClient | None = None,
        version: str = "v1",
    ) -> None:
        self.url = resolve_url(url)
        self.version = version
        self.api_key = resolve_api_key(api_key)
        self.timeout = check_timeout(timeout)
        self.retries = retries
        self.backoff = backoff
        self.base = f"{self.url}/{version}/"
        self._own_client = client is None
        self._whole = httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout))
        self._fixed = {
            "User-Agent": USER_AGENT,
            "Authorization": authorization(self.api_key),
            "Accept": "application/json, text/plain",
        }
        # Our own client has the whole timeout (the first attempt's) and the fixed headers
        # as its defaults, which spares httpx merging them into every request.
        self._first: Any = httpx.USE_CLIENT_DEFAULT if client is None else self._whole
        self._headers: dict[str, str] | None = None if client is None else self._fixed
        # Made once: a forked child's new clients reuse it (loading CAs takes milliseconds).
        self._ssl = httpx.create_ssl_context()
        self.client = client or self._new_client(MAX_CONNECTIONS)
        self._streams: httpx.AsyncClient | None = None
        reset_after_fork(self)

    def _new_client(self, connections: int) -> httpx.AsyncClient:
        """A client of our own with the fixed headers, the whole timeout and a fresh pool."""
        return httpx.AsyncClient(
            headers=self._fixed,
            timeout=self._whole,
            verify=self._ssl,
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=IDLE_LIMIT,
            ),
            follow_redirects=False,
        )

    def _after_fork(self) -> None:
        """Leave the parent's pooled connections to it: a forked child opens its own."""
        if self._own_client:
            self.client = self._new_client(MAX_CONNECTIONS)
        self._streams = None

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

    def __repr__(self) -> str:
        return f"<AsyncTransport {self.url}>"

    async def aclose(self) -> None:
        """Close the pooled connections of a client this transport made, and the streams."""
        if self._own_client:
            await self.client.aclose()
        streams, self._streams = self._streams, None
        if streams is not None:
            await streams.aclose()

    async def stream(self, request: protocol.Request, read_timeout: float) -> httpx.Response:
        """Send ``request`` (a long-lived GET) and return the answer, its body not read yet
        (read it, then ``aclose()`` it); no retries.

        Streams use a client of their own, so one open stream never holds a
        connection the pooled requests need. Raises :class:`TransportError`
        when no answer came (the caller decides when to try again).
        """
        if self._streams is None:
            self._streams = self._new_client(MAX_STREAMS)
        timeout = httpx.Timeout(read_timeout, connect=min(CONNECT_TIMEOUT, self.timeout))
        built = self._streams.build_request(
            request.method, self.base + request.target, headers=request.headers, timeout=timeout
        )
        try:
            return await self._streams.send(built, stream=True)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach the server at {self.url}: {exc!r}") from exc

    async def send(self, request: protocol.Request) -> httpx.Response:
        """Send ``request`` and return the answer, any status, within ``timeout`` seconds.

        Connection failures and 502/503/504 are retried with backoff when the
        request may be resent (``request.idempotent``, by default
        :func:`kvpio_mapping.protocol.idempotent`); a failure before anything
        was sent always may. Raises :class:`TransportError` when no answer came.
        """
        method, target, body = request.method, request.target, request.body
        deadline = time.monotonic() + self.timeout
        idempotent = request.idempotent
        if idempotent is None:
            idempotent = protocol.idempotent(method, target)
        headers: dict[str, str] | None = self._headers
        if request.headers or body is not None:
            headers = {**(self._headers or {}), **(request.headers or {})}
            if body is not None:
                headers["Content-Type"] = "application/json"
        url = self.base + target
        attempt = 0
        timeout = self._first
        while True:
            try:
                sent = self.client.request(
                    method, url, content=body, headers=headers, timeout=timeout
                )
                response = await _by(deadline, sent)
            except TimeoutError as exc:  # httpx bounds each read; this, the whole answer
                raise KvpioTimeoutError(
                    f"{self.url} did not answer {method} {target!r} within the timeout"
                    f" of {self.timeout:g} s"
                ) from exc
            except httpx.TransportError as exc:
                safe = idempotent or isinstance(exc, _NOTHING_SENT)
                if await self._may_retry(attempt, deadline, safe):
                    attempt += 1
                    timeout = _left(deadline)
                    continue
                if isinstance(exc, httpx.TimeoutException) or time.monotonic() >= deadline:
                    raise KvpioTimeoutError(
                        f"{self.url} did not answer {method} {target!r} within the timeout"
                        f" of {self.timeout:g} s: {exc!r}"
                    ) from exc
                raise TransportError(f"cannot reach the server at {self.url}: {exc!r}") from exc
            if response.status_code in RETRY_STATUSES and await self._may_retry(
                attempt, deadline, idempotent, retry_after(response)
            ):
                attempt += 1
                timeout = _left(deadline)
                continue
            return response

    async def _may_retry(
        self, attempt: int, deadline: float, safe: bool, wait: float | None = None
    ) -> bool:
        """Pause before attempt ``attempt + 1`` and say yes, if it is safe and time is left."""
        pause = retry_pause(self, attempt, deadline, safe, wait)
        if pause is None:
            return False
        await asyncio.sleep(pause)
        return True


T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def _by(deadline: float, answer: Awaitable[T]) -> T:
        """``await answer``, or ``TimeoutError`` at ``deadline`` (``time.monotonic``)."""
        async with asyncio.timeout(deadline - time.monotonic()):
            return await answer

else:

    async def _by(deadline: float, answer: Awaitable[T]) -> T:
        """``await answer``, or ``TimeoutError`` at ``deadline`` (``time.monotonic``)."""
        try:
            return await asyncio.wait_for(answer, deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise TimeoutError from None


def _left(deadline: float) -> httpx.Timeout:
    """The timeout of an attempt that must end by ``deadline``."""
    left = max(deadline - time.monotonic(), 0.001)
    return httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
