"""One connection to a server: a bucket and a template store sharing a session."""

from __future__ import annotations

from typing import Any

from . import protocol
from .bucket import DEFAULT_MAXSIZE, DEFAULT_TTL, KVBucket
from .templates import TemplateStore
from .transport import DEFAULT_TIMEOUT, Transport


class Connection:
    """``.bucket`` and ``.templates`` over one pooled session, keeping each other's caches right.

    A write through ``.bucket`` drops the cached renderings that used the
    top-level key it wrote. With ``live=True`` one change feed keeps both
    caches coherent with every client's writes (see :class:`KVBucket`).
    """

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
        self._attach(Transport(url, api_key, timeout=timeout), ttl, maxsize, live)

    def _attach(self, transport: Transport, ttl: float, maxsize: int, live: bool) -> None:
        """Make the bucket and template store over ``transport``, their caches linked."""
        self.transport = transport
        self.bucket = KVBucket(transport=transport, ttl=ttl, maxsize=maxsize, live=live)
        self.templates = TemplateStore(transport, ttl=ttl, maxsize=maxsize)
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
        self._attach(state["transport"], state["ttl"], state["maxsize"], state.get("live", False))

    def account(self) -> dict[str, Any]:
        """The account's ``id``, ``email``, ``reads`` and ``size``."""
        info: dict[str, Any] = protocol.document(self.transport.send(protocol.account()), dict)
        return info

    def close(self) -> None:
        """Close the pooled connections and the change feed."""
        self.bucket.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection(url={self.transport.url!r})"


def connect(
    url: str | None = None,
    api_key: str | None = None,
    *,
    ttl: float = DEFAULT_TTL,
    maxsize: int = DEFAULT_MAXSIZE,
    timeout: float = DEFAULT_TIMEOUT,
    live: bool = False,
) -> Connection:
    """Open a :class:`Connection`; ``url`` and ``api_key`` default as for :class:`KVBucket`."""
    return Connection(url, api_key, ttl=ttl, maxsize=maxsize, timeout=timeout, live=live)
