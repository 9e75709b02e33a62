"""One asyncio connection to a server: an async bucket and template store sharing a pool."""

from __future__ import annotations

from typing import Any

from . import protocol
from .async_bucket import AsyncKVBucket
from .async_templates import AsyncTemplateStore
from .async_transport import AsyncTransport
from .bucket import DEFAULT_MAXSIZE, DEFAULT_TTL
from .transport import DEFAULT_TIMEOUT


class AsyncConnection:
    """``.bucket`` and ``.templates`` over one ``httpx.AsyncClient``, keeping each other's
    caches right, as :class:`~kvpio_mapping.Connection` does for blocking code (with
    ``live=True``, one change feed keeps both coherent with every client's writes)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        maxsize: int = DEFAULT_MAXSIZE,
        timeout: float = DEFAULT_TIMEOUT,
        live: bool = False,
    ) -> None:
        self._attach(AsyncTransport(url, api_key, timeout=timeout), ttl, maxsize, live)

    def _attach(self, transport: AsyncTransport, ttl: float, maxsize: int, live: bool) -> None:
        """Make the bucket and template store over ``transport``, their caches linked."""
        self.transport = transport
        self.bucket = AsyncKVBucket(transport=transport, ttl=ttl, maxsize=maxsize, live=live)
        self.templates = AsyncTemplateStore(transport, ttl=ttl, maxsize=maxsize)
        state = self.bucket.state
        state.add_listener(self.templates.bucket_changed)
        state.add_template_listener(self.templates.invalidate)

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only (a worker process opens its own connections)."""
        state = self.bucket.state
        return {
            "transport": self.transport,
            "ttl": state.cache.ttl,
            "maxsize": state.cache.maxsize,
            "live": state.live,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._attach(state["transport"], state["ttl"], state["maxsize"], state["live"])

    async def account(self) -> dict[str, Any]:
        """The account's ``id``, ``email``, ``reads`` and ``size``."""
        info: dict[str, Any] = protocol.document(
            await self.transport.send(protocol.account()), dict
        )
        return info

    async def aclose(self) -> None:
        """Stop the live feed, and close the pooled connections."""
        await self.bucket.aclose()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncConnection(url={self.transport.url!r})"


def connect_async(
    url: str | None = None,
    api_key: str | None = None,
    *,
    ttl: float = DEFAULT_TTL,
    maxsize: int = DEFAULT_MAXSIZE,
    timeout: float = DEFAULT_TIMEOUT,
    live: bool = False,
) -> AsyncConnection:
    """Open an :class:`AsyncConnection` (``async with connect_async() as conn``); ``url`` and
    ``api_key`` default as for :class:`~kvpio_mapping.KVBucket`."""
    return AsyncConnection(url, api_key, ttl=ttl, maxsize=maxsize, timeout=timeout, live=live)
