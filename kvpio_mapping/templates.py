"""``TemplateStore``: the bucket's Jinja2 templates as a mapping of name to rendered text."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import suppress
from typing import Any
from urllib.parse import unquote

from cachetools import TTLCache

from . import paths, protocol, values
from .cache import CacheInfo
from .paths import MISSING
from .transport import Transport
from .watch import Watch


class TemplateStore(MutableMapping[str, str]):
    """Templates by name: ``store['page']`` is the page rendered with the bucket's data.

    ``store['page'] = 'Hello {{ user.name }}'`` stores a source;
    :meth:`render` renders with overrides, :meth:`source` reads the source.
    Rendered text is cached for ``ttl`` seconds; a write through a
    :class:`KVBucket` of the same connection to a key the template uses, or
    to the template itself, drops the cached text at once.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        ttl: float = 5.0,
        maxsize: int = 256,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._ttl = ttl
        self._maxsize = maxsize
        self._enabled = ttl > 0 and maxsize > 0
        self._lock = threading.Lock()
        self._timer = timer
        self._renders: TTLCache[str, tuple[str, frozenset[str]]] = TTLCache(
            max(maxsize, 1), ttl, timer=timer
        )
        _live[id(self)] = self
        self._generation = 0
        self._hits = 0
        self._misses = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._transport.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only, as :class:`KVBucket` pickles (no cache, lock or clock)."""
        return {"transport": self._transport, "ttl": self._ttl, "maxsize": self._maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["transport"], ttl=state["ttl"], maxsize=state["maxsize"])  # type: ignore[misc]

    def _target(self, name: object) -> str:
        return "templates/" + paths.url_quote(paths.parse(name))

    def _get(self, name: str, query: str, body: bytes | None = None) -> tuple[str, frozenset[str]]:
        """GET a template; KeyError if there is none."""
        return self._answer(name, query, body)[:2]

    def _answer(
        self, name: str, query: str, body: bytes | None = None
    ) -> tuple[str, frozenset[str], int]:
        """GET a template: its text, the names it uses and the revision; KeyError if none."""
        response = self._transport.request("GET", self._target(name) + query, body=body)
        found = protocol.text(response)
        if found is MISSING:
            raise KeyError(name)
        header = response.headers.get(protocol.NAMES_HEADER, "")
        names = frozenset(unquote(item) for item in header.split(",") if item)
        revision = int(response.headers.get("Kvpio-Revision", "0"))
        return found, names, revision

    def watch(self, name: str) -> TemplateWatch:
        """An iterator of ``name`` rendered now, then again each time the template or a
        top-level key it uses changes (None while there is no such template).

        ``.close()`` it from any thread to end the iteration.
        """
        paths.parse(name)
        return TemplateWatch(self, name)

    def __getitem__(self, name: str) -> str:
        if self._enabled:
            with self._lock:
                cached = self._renders.get(name)
                if cached is not None:
                    self._hits += 1
                    return cached[0]
                self._misses += 1
                generation = self._generation
        text, names = self._get(name, "?raw=False")
        if self._enabled:
            with self._lock:
                if generation == self._generation:
                    self._renders[name] = (text, names)
        return text

    def render(self, name: str, data: dict[str, Any] | None = None) -> str:
        """Render ``name`` with ``data`` supplying or overriding top-level names (not cached)."""
        if data is None:
            return self[name]
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, not {type(data).__name__}")
        return self._get(name, "?raw=False", values.encode(data))[0]

    def source(self, name: str) -> str:
        """The template's stored source, unrendered."""
        return self._get(name, "?raw=True")[0]

    def __setitem__(self, name: str, source: str) -> None:
        if not isinstance(source, str):
            raise TypeError(f"a template source must be str, not {type(source).__name__}")
        target = self._target(name)
        try:
            protocol.check(self._transport.request("POST", target, body=values.encode(source)))
        finally:
            self._forget(name)

    def __delitem__(self, name: str) -> None:
        target = self._target(name)
        try:
            found = protocol.text(self._transport.request("DELETE", target + "?pop=true"))
        finally:
            self._forget(name)
        if found is MISSING:
            raise KeyError(name)

    def clear(self) -> None:
        """Delete every template, without rendering them (one may not render)."""
        for name in self._names():
            with suppress(KeyError):  # deleted meanwhile
                del self[name]

    def _names(self) -> list[str]:
        return protocol.keys(self._transport.request("GET", "templates/"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        try:
            self._get(name, "?raw=True")  # type: ignore[arg-type]
        except KeyError:
            return False
        return True

    def _after_fork(self) -> None:
        """Start empty with a new lock: another thread of the parent may have held the old one."""
        self._lock = threading.Lock()
        renders = self._renders
        self._renders = TTLCache(renders.maxsize, renders.ttl, timer=self._timer)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._generation += 1
            self._renders.pop(name, None)

    def bucket_changed(self, path: str | None) -> None:
        """Drop renderings that used the top-level key written at ``path`` (all if None)."""
        with self._lock:
            self._generation += 1
            if path is None:
                self._renders.clear()
                return
            top = path.split("/", 1)[0]
            for name in [n for n, (_, used) in self._renders.items() if top in used]:
                self._renders.pop(name, None)

    def invalidate(self, name: str | None = None) -> None:
        """Drop the cached rendering of ``name``, or all of them."""
        if name is None:
            self.bucket_changed(None)
        else:
            self._forget(name)

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current size of the rendered-text cache."""
        with self._lock:
            size = len(self._renders)
            return CacheInfo(self._hits, self._misses, int(self._renders.maxsize), size)


class TemplateWatch(Iterator[str | None]):
    """See :meth:`TemplateStore.watch`: follows the bucket's feed, renders on relevant changes.

    A rendering equal to the last one yielded is not yielded again.
    """

    def __init__(self, store: TemplateStore, name: str) -> None:
        self._store = store
        self._name = name
        self._names: frozenset[str] = frozenset()
        self._watch: Watch | None = None
        self._last: str | None = None
        self._closed = False

    def __iter__(self) -> TemplateWatch:
        return self

    def _render(self) -> tuple[str | None, int]:
        try:
            text, self._names, revision = self._store._answer(self._name, "?raw=False")
        except KeyError:
            return None, int(
                self._store._transport.request("GET", "templates/").headers.get(
                    "Kvpio-Revision", "0"
                )
            )
        return text, revision

    def __next__(self) -> str | None:
        if self._watch is None:
            if self._closed:
                raise StopIteration
            text, revision = self._render()
            # Resuming after the rendering's revision: nothing between is missed.
            self._watch = Watch(self._store._transport, revision=revision, snapshot=False)
            if self._closed:
                self._watch.close()
            self._last = text
            return text
        for change in self._watch:
            if change.kind == "template":
                relevant = change.path == self._name
            else:
                top = change.path.split("/", 1)[0]
                relevant = change.kind == "reset" or not top or top in self._names
            if relevant:
                text, _ = self._render()
                if text != self._last:
                    self._last = text
                    return text
        raise StopIteration

    def close(self) -> None:
        """End the iteration (from any thread)."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()


# By id: a mapping is unhashable, so it cannot be in a WeakSet.
_live: weakref.WeakValueDictionary[int, TemplateStore] = weakref.WeakValueDictionary()


def _reset_after_fork() -> None:
    for store in list(_live.values()):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
