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
    caches right, as :class:`~kvpio_mapping.Connection` does for blocking code."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        maxsize: int = DEFAULT_MAXSIZE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.transport = AsyncTransport(url, api_key, timeout=timeout)
        self.bucket = AsyncKVBucket(transport=self.transport, ttl=ttl, maxsize=maxsize)
        self.templates = AsyncTemplateStore(self.transport, ttl=ttl, maxsize=maxsize)
        self.bucket.state.add_listener(self.templates.bucket_changed)

    async def account(self) -> dict[str, Any]:
        """The account's ``id``, ``email``, ``reads`` and ``size``."""
        info: dict[str, Any] = protocol.document(
            await self.transport.send(protocol.account()), dict
        )
        return info

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.transport.aclose()

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
) -> AsyncConnection:
    """Open an :class:`AsyncConnection` (``async with connect_async() as conn``); ``url`` and
    ``api_key`` default as for :class:`~kvpio_mapping.KVBucket`."""
    return AsyncConnection(url, api_key, ttl=ttl, maxsize=maxsize, timeout=timeout)
