"""``AsyncTemplateStore``: the template store of :class:`~kvpio_mapping.TemplateStore`
for asyncio code, running the same template flows with the same rendered-text cache."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from . import operations, protocol
from .async_transport import AsyncTransport
from .async_watch import AsyncWatch
from .cache import CacheInfo
from .operations import Flow, run_async
from .templates import (
    RenderCache,
    TemplateFollow,
    clear,
    exists,
    remove,
    rendered,
    rendering,
    source,
    store,
)

_T = TypeVar("_T")


class AsyncTemplateStore:
    """Templates by name: ``await store.get('page')`` is the page rendered with the bucket's data.

    ``transport`` is an :class:`~kvpio_mapping.async_transport.AsyncTransport`;
    ``ttl``, ``maxsize`` and ``timer`` configure the rendered-text cache as
    for :class:`~kvpio_mapping.TemplateStore`.
    """

    def __init__(
        self,
        transport: AsyncTransport,
        *,
        ttl: float = 5.0,
        maxsize: int = 256,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._cache = RenderCache(ttl, maxsize, timer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._transport.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only, as :class:`AsyncKVBucket` pickles (no cache, lock or clock)."""
        cache = self._cache
        return {"transport": self._transport, "ttl": cache.ttl, "maxsize": cache.maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["transport"], ttl=state["ttl"], maxsize=state["maxsize"])  # type: ignore[misc]

    async def _run(self, flow: Flow[_T]) -> _T:
        return await run_async(flow, self._transport.send)

    async def get(self, name: str) -> str:
        """``name`` rendered with the bucket's data (cached); KeyError if there is none."""
        return await self._run(rendered(self._cache, name))

    async def render(self, name: str, data: dict[str, Any] | None = None) -> str:
        """Render ``name`` with ``data`` supplying or overriding top-level names (not cached)."""
        return await self._run(rendered(self._cache, name, data))

    async def source(self, name: str) -> str:
        """The template's stored source, unrendered."""
        return await self._run(source(name))

    async def set(self, name: str, text: str) -> None:
        """Store the template source ``text`` as ``name``."""
        await self._run(store(self._cache, name, text))

    async def delete(self, name: str) -> None:
        """Delete the template ``name``; KeyError if there is none."""
        await self._run(remove(self._cache, name))

    async def contains(self, name: object) -> bool:
        """Whether a template ``name`` is stored."""
        return await self._run(exists(name))

    async def names(self) -> list[str]:
        """The template names, in one request."""
        return await self._run(operations.keys_of(protocol.list_templates()))

    async def clear(self) -> None:
        """Delete every template, without rendering them (one may not render)."""
        await self._run(clear(self._cache))

    def watch(self, name: str) -> AsyncTemplateWatch:
        """``name`` rendered now, then again each time the template or a top-level key it
        uses changes (None while there is no such template): ``async for text in ...``;
        ``await watch.aclose()`` ends it."""
        protocol.template_target(name)
        return AsyncTemplateWatch(self._transport, name)

    def bucket_changed(self, path: str | None) -> None:
        """Drop renderings that used the top-level key written at ``path`` (all if None)."""
        self._cache.bucket_changed(path)

    def invalidate(self, name: str | None = None) -> None:
        """Drop the cached rendering of ``name``, or all of them."""
        if name is None:
            self._cache.bucket_changed(None)
        else:
            self._cache.forget(name)

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current size of the rendered-text cache."""
        return self._cache.info()


class AsyncTemplateWatch(AsyncIterator[str | None]):
    """See :meth:`AsyncTemplateStore.watch`: the rules of
    :class:`~kvpio_mapping.templates.TemplateWatch` over an async watch."""

    def __init__(self, transport: AsyncTransport, name: str) -> None:
        self._transport = transport
        self._follow = TemplateFollow(name)
        self._watch: AsyncWatch | None = None
        self._closed = False

    def __aiter__(self) -> AsyncTemplateWatch:
        return self

    async def __anext__(self) -> str | None:
        follow = self._follow
        if self._watch is None:
            if self._closed:
                raise StopAsyncIteration
            text, names, revision = await run_async(rendering(follow.name), self._transport.send)
            follow.rendered(text, names)
            # Resuming after the rendering's revision: nothing between is missed.
            self._watch = AsyncWatch(self._transport, revision=revision, snapshot=False)
            if self._closed:
                await self._watch.aclose()
            return text
        async for change in self._watch:
            if follow.relevant(change):
                text, names, _ = await run_async(rendering(follow.name), self._transport.send)
                if follow.rendered(text, names):
                    return text
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """End the iteration (also one blocked in another task)."""
        self._closed = True
        if self._watch is not None:
            await self._watch.aclose()

    async def __aenter__(self) -> AsyncTemplateWatch:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()
