"""``KVBucket``: a remote kvp.io bucket that behaves as a ``dict``.

Reads return the caller's own copy (as ``shelve`` does, mutating a value you
read changes nothing until you assign it back); :meth:`KVBucket.view` gives a
live mapping over nested data instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import Any, Final, TypeVar, overload

from . import operations, paths, values
from .cache import NOT_CACHED, PathCache
from .live import LiveFeed
from .operations import ClientState, Flow, Rooted, run
from .paths import MISSING
from .sharing import SharingMixin
from .transport import DEFAULT_TIMEOUT, Transport
from .watch import Watch

DEFAULT_TTL: Final = 5.0
DEFAULT_MAXSIZE: Final = 1024

_T = TypeVar("_T")
_IMMUTABLE: Final = frozenset({str, int, float, bool, type(None)})
_NO_DEFAULT: Final[Any] = object()


class _Listing(threading.local):
    """The values of this thread's last ``keys()`` listing not yet looked up, and the
    root of the mapping that listed them.

    ``dict(bucket)`` iterates ``keys()`` and then looks up each key; serving
    those lookups from the listing's own snapshot makes it one request at
    any size and ``ttl``, and one consistent state of the bucket. A bucket
    and its views share one listing, so any other lookup, and any write,
    through any of them drops it.
    """

    pending: dict[str, Any] | None = None
    root: paths.Path = ()


def update_pairs(other: Any, kwargs: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The ``(key, value)`` pairs ``dict.update(other, **kwargs)`` would set, in order,
    with the same errors for an argument it would refuse."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(other, Mapping):
        pairs.extend((key, other[key]) for key in other)
    elif hasattr(other, "keys"):
        pairs.extend((key, other[key]) for key in other.keys())  # noqa: SIM118
    else:
        for index, pair in enumerate(other):
            try:
                items = list(pair)
            except TypeError:
                raise TypeError(
                    f"cannot convert update sequence element #{index} to a sequence"
                ) from None
            if len(items) != 2:
                raise ValueError(
                    f"update sequence element #{index} has length {len(items)}; 2 is required"
                )
            pairs.append((items[0], items[1]))
    pairs.extend(kwargs.items())
    return pairs


class KVBucket(SharingMixin, Rooted, MutableMapping[str, Any]):
    """A mapping of ``str`` slash paths to JSON values, stored in a kvp.io v1 bucket.

    ``url`` defaults to ``$KVPIO_URL``, else ``http://127.0.0.1:8000``;
    ``api_key`` to ``$KVPIO_APIKEY``, else the first line of ``~/.kvpio``.
    Reads are cached for ``ttl`` seconds (``ttl=0`` turns the cache off), at
    most ``maxsize`` paths (paths known missing for at most a second);
    ``timer`` is the cache's clock. ``timeout`` is the most seconds one
    operation may take, retries included. ``transport`` shares another
    connection's session. Tuples are stored as JSON arrays and read back as
    lists; every read returns a fresh copy. With ``live=True`` a background
    change feed drops cached reads as soon as any client's write changes
    them, so the cache is fresh within milliseconds; while that feed is
    down, the ``ttl`` rule holds (see :mod:`kvpio_mapping.live`).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        maxsize: int = DEFAULT_MAXSIZE,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Transport | None = None,
        timer: Callable[[], float] = time.monotonic,
        live: bool = False,
    ) -> None:
        cache = PathCache(ttl, maxsize, timer=timer)
        self._state = ClientState(transport or Transport(url, api_key, timeout=timeout), cache)
        self._root = ()
        self._listing = _Listing()
        if live:
            self._state.go_live(LiveFeed)

    @property
    def _transport(self) -> Transport:
        return self._state.transport  # type: ignore[no-any-return]

    @property
    def _cache(self) -> PathCache:
        return self._state.cache

    # configuration, pickling, views

    def __getstate__(self) -> dict[str, Any]:
        return {
            "transport": self._transport,
            "ttl": self._cache.ttl,
            "maxsize": self._cache.maxsize,
            "root": self._root,
            "live": self._state.live,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            transport=state["transport"],
            ttl=state["ttl"],
            maxsize=state["maxsize"],
            live=state.get("live", False),
        )
        self._root = state["root"]

    def view(self, path: str) -> KVBucket:
        """A live mapping over the object at ``path``: ``view('cfg')['x'] = 1`` writes ``cfg/x``.

        The view shares this bucket's connection and cache. Its keys are the
        object's keys (a list's positions ``'1'``..``'n'``); it is empty while
        nothing, or a scalar, is at ``path``.
        """
        view: KVBucket = self._viewed(path)
        view._listing = self._listing
        return view

    def _run(self, flow: Flow[_T]) -> _T:
        """Drive an operation of :mod:`kvpio_mapping.operations` over the transport; any
        operation drops this thread's pending listing (a write may change it)."""
        self._listing.pending = None
        return run(flow, self._state.transport.send)

    # reads

    def _read(self, full: str) -> Any:
        """The shared (uncopied) value at ``full``, or MISSING: cache first, else one GET."""
        return self._run(operations.read(self._state, full))

    def __getitem__(self, key: str) -> Any:
        listing = self._listing
        pending = listing.pending
        if pending is not None:
            mine = type(key) is str and listing.root == self._root
            found = pending.pop(key, MISSING) if mine else MISSING
            if found is not MISSING:
                return values.copy(found)
            listing.pending = None
        cache = self._state.cache
        if cache.enabled and type(key) is str and not self._root:
            found = cache.exact(key)
            if found is not NOT_CACHED:
                if found is MISSING:
                    raise KeyError(key)
                if type(found) in _IMMUTABLE:
                    return found
                return values.copy(found)
        found = self._lookup(key)
        if found is MISSING:
            raise KeyError(key)
        return values.copy(found)

    def _lookup(self, key: object) -> Any:
        """The shared value at ``key``, or MISSING (also for a key that can never exist)."""
        full = self._valid(key)
        return MISSING if full is None else self._read(full)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not MISSING

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` if ``key`` is present, else ``default``."""
        found = self._lookup(key)
        return default if found is MISSING else values.copy(found)

    def _keys(self) -> list[str]:
        """Child keys of this mapping's root, in one request."""
        return self._run(operations.keys(self.path))

    def _snapshot(self) -> dict[str, Any]:
        """This mapping's whole content in one request, warming the cache with it."""
        return self._run(operations.snapshot(self._state, self.path))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return self._run(operations.length(self._state, self.path))

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._keys())

    def keys(self) -> KeysView[str]:
        """A live view of the keys. Iterating it fetches the whole content once.

        Looking up the listed keys next (as ``dict(bucket)`` does) is answered
        from that same content: one request, one consistent snapshot.
        """
        return _KeysView(self)

    def items(self) -> ItemsView[str, Any]:
        """A live view of ``(key, value)`` pairs; iterating it costs one request."""
        return _ItemsView(self)

    def values(self) -> ValuesView[Any]:
        """A live view of the values; iterating it costs one request."""
        return _ValuesView(self)

    def _hand_out(self, content: dict[str, Any]) -> dict[str, Any]:
        """``content`` (the caller's copy of this mapping's values) as reads hand it out."""
        return content

    def copy(self) -> dict[str, Any]:
        """The whole content as a plain ``dict``, in one request."""
        return values.copy(self._snapshot())  # type: ignore[no-any-return]

    # writes

    def __setitem__(self, key: str, value: Any) -> None:
        self._store(self._full(key), value)

    def _store(self, full: str, value: Any) -> None:
        """Write ``value`` at the full path ``full`` (checked first: nothing is sent if bad)."""
        self._run(operations.store(self._state, full, value))

    def _store_many(self, batch: list[tuple[str, Any]], scope: str | None) -> None:
        """Write each ``(full path, value)`` in order, in one atomic request; ``scope`` is
        the path all of them are below (None: the whole bucket), forgotten by the cache."""
        self._run(operations.store_many(self._state, batch, scope))

    def _pop(self, full: str) -> Any:
        """Remove ``full`` atomically on the server and return what was there, or MISSING."""
        return self._run(operations.pop(self._state, full))

    def __delitem__(self, key: str) -> None:
        full = self._valid(key)
        if full is None or self._pop(full) is MISSING:
            raise KeyError(key)

    @overload
    def pop(self, key: str) -> Any: ...
    @overload
    def pop(self, key: str, default: _T) -> Any | _T: ...

    def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Remove ``key`` and return its value, atomically; ``default`` or KeyError if absent."""
        full = self._valid(key)
        found = MISSING if full is None else self._pop(full)
        if found is MISSING:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        return found

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last-inserted ``(key, value)`` pair; KeyError if empty."""
        key, found = self._run(operations.popitem(self._state, self.path, self._full))
        return key, found

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``self[key]`` if present; else store ``default`` only if still absent, atomically.

        Returns exactly what the bucket held when the write was decided: the
        stored ``default``, or the value a concurrent writer got there first
        (which the refusal carries: no second read).
        """
        found = self._run(operations.setdefault(self._state, self._full(key), default))
        return found if found is default else values.copy(found)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one atomic request; nothing is sent if any key or value is invalid."""
        pairs = update_pairs(other, kwargs)
        if pairs:
            batch = [(self._full(key), value) for key, value in pairs]
            self._store_many(batch, paths.join(self._root) or None)

    def clear(self) -> None:
        """Remove every key, in one request (a view's object becomes ``{}``)."""
        self._run(operations.clear(self._state, self.path))

    def __ior__(self, other: Any) -> KVBucket:
        self.update(other)
        return self

    def __or__(self, other: Any) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Any) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.copy())
        return merged

    # cache control

    def invalidate(self, path: str | None = None) -> None:
        """Drop cached reads of ``path`` (its ancestors and what is below it), or all."""
        self._listing.pending = None
        super().invalidate(path)

    def watch(self, path: str = "", *, revision: int | None = None) -> Watch:
        """An iterator of the changes at or below ``path`` (``''``: this mapping's root).

        It starts with a ``snapshot`` of the value there (or resumes after
        ``revision``), then yields each change as it is committed by any
        client, reconnecting by itself; ``.close()`` it from any thread.
        """
        return Watch(self._transport, self._watched(path), revision=revision)

    def close(self) -> None:
        """Close the pooled connections (they reopen if the bucket is used again) and the feed."""
        self._state.close_live()
        self._transport.close()

    def __enter__(self) -> KVBucket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _View:
    """What the three views share: their content is one snapshot per iteration.

    ``list(view)`` iterates the view, then asks its ``len()`` for a size hint;
    ``len()`` answers from the snapshot the iteration before it took (once),
    so that costs one request. Only while that iteration runs, and only if
    nothing was written since its snapshot: else the view is as live as ever.
    """

    _mapping: KVBucket
    _taken: tuple[dict[str, Any], int] | None = None

    def __len__(self) -> int:
        taken, self._taken = self._taken, None
        if taken is not None and taken[1] == self._mapping._state.cache.generation:
            return len(taken[0])
        return len(self._mapping)

    def _content(self) -> dict[str, Any]:
        """A new snapshot (shared values), without keeping it for ``len()``."""
        return self._mapping._snapshot()

    def _iterated(self, snapshot: dict[str, Any], items: Iterable[_T]) -> Iterator[_T]:
        """An iterator of ``items`` of ``snapshot``, a new snapshot kept for the ``len()``
        that may follow until the iteration ends."""
        taken = self._taken = (snapshot, self._mapping._state.cache.generation)

        def iterate() -> Iterator[_T]:
            try:
                yield from items
            finally:
                if self._taken is taken:
                    self._taken = None

        return iterate()

    def _given(self) -> dict[str, Any]:
        """A new snapshot as the caller's own values (live ones in write-back mode)."""
        return self._mapping._hand_out(values.copy(self._content()))


class _KeysView(_View, KeysView[str]):
    def __iter__(self) -> Iterator[str]:
        snapshot = self._content()
        listing = self._mapping._listing
        listing.pending, listing.root = snapshot, self._mapping._root
        return self._iterated(snapshot, list(snapshot))

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self._content()))


class _ItemsView(_View, ItemsView[str, Any]):
    def __iter__(self) -> Iterator[tuple[str, Any]]:
        given = self._given()
        return self._iterated(given, given.items())

    def __reversed__(self) -> Iterator[tuple[str, Any]]:
        return reversed(self._given().items())

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        found = self._mapping._lookup(key)
        return found is not MISSING and bool(found == value)

    # Set operations are a plain dict's items view's, on one snapshot: the same
    # results, and the same TypeError for a value that cannot be hashed.

    def _pairs(self) -> ItemsView[str, Any]:
        snapshot: dict[str, Any] = values.copy(self._content())
        return snapshot.items()

    def __and__(self, other: Any) -> Any:
        return self._pairs() & other

    def __rand__(self, other: Any) -> Any:
        return other & self._pairs()

    def __or__(self, other: Any) -> Any:
        return self._pairs() | other

    def __ror__(self, other: Any) -> Any:
        return other | self._pairs()

    def __sub__(self, other: Any) -> Any:
        return self._pairs() - other

    def __rsub__(self, other: Any) -> Any:
        return other - self._pairs()

    def __xor__(self, other: Any) -> Any:
        return self._pairs() ^ other

    def __rxor__(self, other: Any) -> Any:
        return other ^ self._pairs()

    def isdisjoint(self, other: Any) -> bool:
        return self._pairs().isdisjoint(other)


class _ValuesView(_View, ValuesView[Any]):
    def __iter__(self) -> Iterator[Any]:
        given = self._given()
        return self._iterated(given, given.values())

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._given().values())

    def __contains__(self, value: object) -> bool:
        return any(item == value for item in self._content().values())
