"""``AsyncKVBucket``: the bucket of :class:`~kvpio_mapping.KVBucket` for asyncio code.

Every operation is the same flow of :mod:`kvpio_mapping.operations` that
the blocking bucket runs (the same requests, cache rules, exceptions and
round trips), awaited over an :class:`~kvpio_mapping.async_transport.AsyncTransport`,
so it never blocks the event loop. A ``dict`` cannot be awaited, so the
mapping is spelled with methods: ``await b.get(k)``, ``await b.set(k, v)``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from . import operations, values
from .async_live import AsyncLiveFeed
from .async_transport import AsyncTransport
from .async_watch import AsyncWatch
from .bucket import DEFAULT_MAXSIZE, DEFAULT_TTL, update_pairs
from .cache import PathCache
from .operations import ClientState, Flow, Rooted, run_async
from .paths import MISSING
from .sharing import DEFAULT_RETRIES, TransactionState, Versioned, conflict, make_versioned
from .transport import DEFAULT_TIMEOUT

_T = TypeVar("_T")
_NO_DEFAULT: Any = object()


class AsyncKVBucket(Rooted):
    """A bucket of ``str`` slash paths to JSON values, for asyncio code.

    Configured as :class:`~kvpio_mapping.KVBucket` is (``url``, ``api_key``,
    ``ttl``, ``maxsize``, ``timeout``, ``timer``, ``live``); ``transport``
    shares an :class:`~kvpio_mapping.async_transport.AsyncTransport`. With
    ``live=True`` a task of the event loop follows the change feed and drops
    cached reads as any client's writes change them (see
    :mod:`kvpio_mapping.async_live`). Use it from one event loop, and close
    it with ``await b.aclose()`` or ``async with``. Pickling keeps the
    configuration; a forked child opens its own connections and feed.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        maxsize: int = DEFAULT_MAXSIZE,
        timeout: float = DEFAULT_TIMEOUT,
        transport: AsyncTransport | None = None,
        timer: Callable[[], float] = time.monotonic,
        live: bool = False,
    ) -> None:
        transport = transport or AsyncTransport(url, api_key, timeout=timeout)
        self._state = ClientState(transport, PathCache(ttl, maxsize, timer=timer))
        self._root = ()
        if live:
            self._state.go_live(AsyncLiveFeed)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "transport": self._state.transport,
            "ttl": self._state.cache.ttl,
            "maxsize": self._state.cache.maxsize,
            "root": self._root,
            "live": self._state.live,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            transport=state["transport"],
            ttl=state["ttl"],
            maxsize=state["maxsize"],
            live=state["live"],
        )
        self._root = state["root"]

    def view(self, path: str) -> AsyncKVBucket:
        """The bucket over the object at ``path``, sharing this one's connection and cache."""
        view: AsyncKVBucket = self._viewed(path)
        return view

    def _run(self, flow: Flow[_T]) -> Awaitable[_T]:
        """Await an operation of :mod:`kvpio_mapping.operations` over the transport."""
        return run_async(flow, self._state.transport.send)

    async def _lookup(self, key: object) -> Any:
        full = self._valid(key)
        return MISSING if full is None else await self._run(operations.read(self._state, full))

    # reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` (the caller's own copy), or ``default`` if absent."""
        found = await self._lookup(key)
        return default if found is MISSING else values.copy(found)

    async def contains(self, key: object) -> bool:
        """Whether a value is at ``key``."""
        return await self._lookup(key) is not MISSING

    async def keys(self) -> list[str]:
        """The keys, in one request."""
        return await self._run(operations.keys(self.path))

    async def size(self) -> int:
        """How many keys there are: one small request, or none when the cache can tell."""
        return await self._run(operations.length(self._state, self.path))

    async def __aiter__(self) -> AsyncIterator[str]:
        for key in await self.keys():
            yield key

    async def copy(self) -> dict[str, Any]:
        """The whole content as a plain ``dict``, in one request."""
        return values.copy(await self._run(operations.snapshot(self._state, self.path)))  # type: ignore[no-any-return]

    async def items(self) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs, in one request."""
        return list((await self.copy()).items())

    async def values(self) -> list[Any]:
        """The values, in one request."""
        return list((await self.copy()).values())

    # writes

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` (checked first: nothing is sent if it is bad)."""
        await self._run(operations.store(self._state, self._full(key), value))

    async def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Remove ``key`` and return its value, atomically; ``default`` or KeyError if absent."""
        full = self._valid(key)
        found = MISSING if full is None else await self._run(operations.pop(self._state, full))
        if found is MISSING:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        return found

    async def delete(self, key: str) -> None:
        """Remove ``key``; KeyError if it is absent."""
        await self.pop(key)

    async def popitem(self) -> tuple[str, Any]:
        """Remove and return the last-inserted ``(key, value)`` pair; KeyError if empty."""
        key, found = await self._run(operations.popitem(self._state, self.path, self._full))
        return key, found

    async def setdefault(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` if present; else store ``default`` only if still absent."""
        found = await self._run(operations.setdefault(self._state, self._full(key), default))
        return found if found is default else values.copy(found)

    async def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one atomic request; nothing is sent if any key or value is invalid."""
        pairs = update_pairs(other, kwargs)
        if pairs:
            batch = [(self._full(key), value) for key, value in pairs]
            await self._run(operations.store_many(self._state, batch, self.path or None))

    async def clear(self) -> None:
        """Remove every key, in one request (a view's object becomes ``{}``)."""
        await self._run(operations.clear(self._state, self.path))

    # safe sharing, as KVBucket's

    async def increment(self, key: str, by: int | float = 1) -> Any:
        """Add ``by`` to the number at ``key`` (missing counts as 0) atomically; the new number."""
        operations.check_number(by)
        return await self._run(operations.increment(self._state, self._full(key), by))

    async def append(self, key: str, value: Any) -> int:
        """Add ``value`` at the end of the list at ``key`` atomically; its 1-based position."""
        return await self._run(operations.append(self._state, self._full(key), value))

    async def merge(self, key: str, members: dict[str, Any]) -> None:
        """Set each member of ``members`` below the object at ``key`` in one atomic request."""
        await self._run(operations.merge(self._state, self._full(key), members))

    async def versioned(self, key: str) -> Versioned:
        """The value at ``key`` with its ETag (from the cache when fresh); KeyError if absent."""
        value, etag = await self._run(operations.versioned(self._state, self._full(key)))
        return make_versioned(key, value, etag)

    async def set_if(self, key: str, value: Any, etag: str | None) -> bool:
        """Store ``value`` at ``key`` only if its value still has ``etag`` (None: if absent)."""
        flow = operations.write_if(self._state, "POST", self._full(key), values.encode(value), etag)
        stored, _current = await self._run(flow)
        return stored

    async def delete_if(self, key: str, etag: str) -> bool:
        """Delete ``key`` only if its value still has ``etag``; whether it did."""
        flow = operations.write_if(self._state, "DELETE", self._full(key), None, etag)
        deleted, _current = await self._run(flow)
        return deleted

    async def transact(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[_T]],
        *,
        retries: int = DEFAULT_RETRIES,
    ) -> _T:
        """Await ``fn(tx)`` and commit what it wrote atomically, if nothing it read has changed.

        As :meth:`KVBucket.transact <kvpio_mapping.KVBucket.transact>`, with
        ``await tx.get(k)`` for reads; ``fn`` may run several times.
        """
        seeds: dict[str, tuple[Any, str | None]] = {}
        for _attempt in range(retries + 1):
            tx = AsyncTransaction(self, seeds)
            result = await fn(tx)
            failed = await self._run(tx.commit())
            if failed is None:
                return result
            seeds = failed
        raise conflict(retries, seeds)

    # changes

    def watch(self, path: str = "", *, revision: int | None = None) -> AsyncWatch:
        """The changes at or below ``path`` (``''``: this bucket's root), as
        :meth:`KVBucket.watch <kvpio_mapping.KVBucket.watch>` gives them:
        ``async for change in bucket.watch(path)``; ``await watch.aclose()`` ends it."""
        return AsyncWatch(self._state.transport, self._watched(path), revision=revision)

    # connection

    async def aclose(self) -> None:
        """Stop the live feed, and close the pooled connections."""
        feed = self._state.feed
        if isinstance(feed, AsyncLiveFeed):
            await feed.aclose()
        await self._state.transport.aclose()

    async def __aenter__(self) -> AsyncKVBucket:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


class AsyncTransaction(TransactionState):
    """What an async transaction's function sees: ``await tx.get(k)``, ``tx[k] = v``,
    ``await tx.delete(k)``, ``tx.increment``, ``tx.append``; writes are buffered."""

    _bucket: AsyncKVBucket

    async def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` as this transaction sees it, or ``default``."""
        found = await self._bucket._run(self._found(key))
        return default if found is MISSING else values.copy(found)

    async def contains(self, key: str) -> bool:
        """Whether a value is at ``key`` as this transaction sees it."""
        return await self._bucket._run(self._present(key))

    async def delete(self, key: str) -> None:
        """Delete ``key`` when the transaction commits; KeyError if it is not there."""
        await self._bucket._run(self._removal(key))
