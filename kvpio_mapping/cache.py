"""A path-aware TTL read cache, never wrong about what this client wrote.

Entries are keyed by canonical path strings (``"a/b/c"``). A lookup of
``a/b/c`` is also answered from a cached ``a/b`` or ``a``. A write or delete
at ``p`` drops ``p``, every ancestor of ``p`` and everything below ``p``, and
bumps a generation counter so that a read which started before the write
cannot store what it fetched afterwards.

Counts (``len()`` of the bucket or of a view) are kept beside the values,
by the path counted (``""`` for the bucket), and dropped by the same writes:
a write at ``p`` drops the counts of ``p``, of its ancestors (the bucket's
included) and of everything below it. A count is also answered from a
cached value at its path or above it.

An expired entry is kept (until the LRU order drops it) with the server's
``ETag``, so the next read can revalidate it with ``If-None-Match`` and get a
bodiless 304 instead of the value again.

A *live* cache (:attr:`PathCache.live`, set while the change feed is
connected and caught up) keeps entries past their TTL: the feed drops each
entry another client's write touches, so an entry is right until then.
While the feed is down, the TTL rule holds again.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NamedTuple

from . import paths, values
from .forks import reset_after_fork
from .paths import MISSING


class _Absent:
    """The type of :data:`NOT_CACHED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_CACHED"


NOT_CACHED: Final = _Absent()
"""What :meth:`PathCache.lookup` returns when the cache cannot answer."""


def _unpadded(path: str) -> str | None:
    """The part of ``path`` before a segment with leading zeros, or None if it has none.

    On a list ``l/01`` is ``l/1``: such a path is never cached, and a write to
    it forgets all of that part, so neither spelling can outlive a write.
    """
    if "/0" not in path:
        return None
    segments = path.split("/")
    for depth in range(1, len(segments)):
        segment = segments[depth]
        if len(segment) > 1 and segment[0] == "0" and segment.isascii() and segment.isdigit():
            return "/".join(segments[:depth])
    return None


class _Entry(NamedTuple):
    expires: float
    value: Any
    etag: str | None


class _Recent(OrderedDict[str, _Entry]):
    """Entries by path, the least recently used first; storing one more than ``maxsize``
    drops the first. ``OrderedDict`` keeps the order in C: a hit is a lookup and a
    ``move_to_end``, two Python calls fewer than a ``cachetools.LRUCache`` hit, which
    made a third of a cache hit's time.

    Beside the order, a tree of the stored paths by segment (each path's children
    that are stored or have stored paths below them), kept on store, eviction,
    :meth:`forget` and ``clear``: :meth:`below` then costs what it finds, not
    what the cache holds. Remove entries only through those.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._children: dict[str, set[str]] = {}

    def __setitem__(self, key: str, value: _Entry) -> None:
        if key not in self:
            self._link(key)
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self._unlink(super().popitem(last=False)[0])

    def get(self, key: str, default: Any = None) -> Any:
        """The entry at ``key`` (now the most recently used), or ``default``."""
        entry = super().get(key, default)
        if entry is not default:
            self.move_to_end(key)
        return entry

    def forget(self, key: str) -> None:
        """Drop the entry at ``key``, if there is one."""
        if super().pop(key, None) is not None:
            self._unlink(key)

    def clear(self) -> None:
        """Drop every entry."""
        super().clear()
        self._children.clear()

    def below(self, path: str) -> list[str]:
        """The stored paths below ``path`` (not ``path`` itself)."""
        children = self._children
        found: list[str] = []
        pending = list(children.get(path, ()))
        while pending:
            node = pending.pop()
            if node in self:
                found.append(node)
            pending.extend(children.get(node, ()))
        return found

    def _link(self, key: str) -> None:
        """Add ``key`` to the tree, under each ancestor not yet in it."""
        children = self._children
        while key:
            parent = key.rpartition("/")[0]
            siblings = children.get(parent)
            if siblings is not None:
                siblings.add(key)
                return
            children[parent] = {key}
            key = parent

    def _unlink(self, key: str) -> None:
        """Take ``key`` (no longer stored) out of the tree, and each ancestor left empty."""
        children = self._children
        while key and key not in self and key not in children:
            parent = key.rpartition("/")[0]
            siblings = children[parent]
            siblings.discard(key)
            if siblings:
                return
            del children[parent]
            key = parent


class CacheInfo(NamedTuple):
    """Cache statistics, as ``functools.lru_cache`` reports them, and whether it is live now."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    live: bool = False


class PathCache:
    """Values (or :data:`~kvpio_mapping.paths.MISSING`) by path, each for a limited time.

    ``ttl`` seconds for values, ``missing_ttl`` (at most ``ttl``) for paths
    known to be missing; ``ttl=0`` or ``maxsize=0`` turns the cache off.
    ``timer`` is the clock, injectable so expiry is tested without sleeping.
    Thread-safe. Stored values are shared: callers copy what they hand out.
    """

    def __init__(
        self,
        ttl: float,
        maxsize: int,
        *,
        missing_ttl: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self.missing_ttl = min(missing_ttl, ttl)
        self.enabled = ttl > 0 and maxsize > 0
        self.live = False
        self.lock = threading.RLock()
        self.generation = 0
        self.hits = 0
        self.misses = 0
        self.timer = timer
        self._entries = _Recent(max(maxsize, 1))
        self._lengths = _Recent(max(maxsize, 1))
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """Start empty with a new lock: another thread of the parent may have held the old one."""
        self.lock = threading.RLock()
        self._entries = _Recent(max(self.maxsize, 1))
        self._lengths = _Recent(max(self.maxsize, 1))
        self.live = False

    def exact(self, path: str) -> Any:
        """The fresh value stored at exactly ``path`` (a hit), or :data:`NOT_CACHED`.

        The fast path for a key already seen: no splitting, no ancestors, and
        ``path`` need not be validated, since only valid paths are stored. A
        miss here is not counted; :meth:`lookup` counts it.
        """
        with self.lock:
            entries = self._entries
            try:
                entry = entries[path]
            except KeyError:
                return NOT_CACHED
            entries.move_to_end(path)
            if not self.live and entry.expires <= self.timer():
                return NOT_CACHED
            self.hits += 1
            return entry.value

    def lookup(self, path: str) -> Any:
        """The cached value at ``path`` (possibly MISSING), or :data:`NOT_CACHED`.

        ``path`` must already be valid: ancestors are searched by splitting it.
        """
        with self.lock:
            found = self._find(path, -math.inf if self.live else self.timer())
            if found is NOT_CACHED:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def _find(self, path: str, now: float) -> Any:
        """The value at ``path`` from a fresh entry at it or above it, or :data:`NOT_CACHED`."""
        entries = self._entries
        ancestor = path
        while True:
            entry = entries.get(ancestor)
            if entry is not None and entry.expires > now:
                if ancestor is path:
                    return entry.value
                rest = tuple(path[len(ancestor) + 1 :].split("/"))
                return paths.get_in(entry.value, rest)
            if "/" not in ancestor:
                return NOT_CACHED
            ancestor = ancestor.rsplit("/", 1)[0]

    def length(self, path: str) -> Any:
        """How many keys or items are at ``path`` (``""``: the bucket), or :data:`NOT_CACHED`.

        From a fresh count, or a fresh value at ``path`` or above it; nothing
        there, or a scalar, has none (as a view over it is empty).
        """
        with self.lock:
            now = -math.inf if self.live else self.timer()
            entry = self._lengths.get(path)
            if entry is not None and entry.expires > now:
                self.hits += 1
                return entry.value
            found: Any = self._find(path, now) if path else NOT_CACHED
            if found is NOT_CACHED:
                self.misses += 1
                return NOT_CACHED
            self.hits += 1
            return len(found) if type(found) in (dict, list) else 0

    def tagged(self, path: str, *, exact: bool = False) -> tuple[str, Any, str | None] | Any:
        """``(where, value, etag)`` of the fresh entry answering ``path``, or :data:`NOT_CACHED`.

        ``where`` is ``path`` or, unless ``exact``, the ancestor whose entry
        holds it; ``value`` is the value at ``where`` and ``etag`` its tag
        (None for MISSING, computed from the value when the server's is not
        known). A transaction checks ``where`` against ``etag`` when it commits.
        """
        with self.lock:
            entries = self._entries
            now = -math.inf if self.live else self.timer()
            where = path
            while True:
                entry = entries.get(where)
                if entry is not None and entry.expires > now:
                    self.hits += 1
                    etag = entry.etag
                    if etag is None and entry.value is not MISSING:
                        etag = values.etag(values.encode(entry.value))
                    return where, entry.value, etag
                if exact or "/" not in where:
                    self.misses += 1
                    return NOT_CACHED
                where = where.rsplit("/", 1)[0]

    def stale(self, path: str) -> tuple[str, Any] | None:
        """``(etag, value)`` of an expired entry at exactly ``path``, to revalidate."""
        with self.lock:
            entry = self._entries.get(path)
            if entry is None or entry.etag is None:
                return None
            return entry.etag, entry.value

    def _entry(self, value: Any, etag: str | None) -> _Entry:
        ttl = self.missing_ttl if value is MISSING else self.ttl
        return _Entry(self.timer() + ttl, value, etag)

    def store(self, path: str, value: Any, generation: int, etag: str | None = None) -> None:
        """Cache ``value`` at ``path`` if no write happened since ``generation`` was read."""
        if not self.enabled or _unpadded(path) is not None:
            return
        with self.lock:
            if generation == self.generation:
                self._entries[path] = self._entry(value, etag)

    def store_length(self, path: str, length: int, generation: int) -> None:
        """Cache the count of ``path`` if no write happened since ``generation`` was read."""
        if not self.enabled or _unpadded(path) is not None:
            return
        with self.lock:
            if generation == self.generation:
                self._lengths[path] = _Entry(self.timer() + self.ttl, length, None)

    def store_many(self, items: Iterator[tuple[str, Any]], generation: int) -> None:
        """:meth:`store` for each pair, under one lock."""
        if not self.enabled:
            return
        with self.lock:
            if generation == self.generation:
                for path, value in items:
                    self._entries[path] = self._entry(value, None)

    def invalidate(self, path: str | None = None) -> None:
        """Forget ``path``, its ancestors and everything below it; everything if None."""
        with self.lock:
            self.generation += 1
            if path is None:
                self._entries.clear()
                self._lengths.clear()
                return
            path = _unpadded(path) or path
            self._lengths.forget("")
            for entries in (self._entries, self._lengths):
                entries.forget(path)
                ancestor = path
                while "/" in ancestor:
                    ancestor = ancestor.rsplit("/", 1)[0]
                    entries.forget(ancestor)
                if path:
                    for below in entries.below(path):
                        entries.forget(below)

    @contextmanager
    def writing(self, path: str | None) -> Iterator[None]:
        """Invalidate around a write, whatever its outcome (it may have reached the server)."""
        try:
            yield
        finally:
            self.invalidate(path)

    def info(self) -> CacheInfo:
        """Hits, misses, maximum and current size."""
        with self.lock:
            now = -math.inf if self.live else self.timer()
            entries = [*self._entries.values(), *self._lengths.values()]
            fresh = sum(1 for entry in entries if entry.expires > now)
            return CacheInfo(self.hits, self.misses, self.maxsize, fresh, self.live)
