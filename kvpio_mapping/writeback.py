"""Write-back mode: values read are live ``dict``/``list`` subclasses writing through.

``WriteBackBucket`` is a :class:`~kvpio_mapping.bucket.KVBucket` whose reads
return :class:`LiveDict` and :class:`LiveList` containers (as
``shelve.open(writeback=True)`` gives live values) so the nested idioms of
``dict`` code work: ``bucket["cfg"]["debug"] = True`` writes ``cfg/debug``,
``bucket.setdefault("log", []).append(3)`` appends at ``log/1``.

Every mutation is one request to its exact path, sent before the container
changes (if the server refuses, or no answer comes, the container is left as
it was), and the bucket's cache forgets that path as for any write. A list
item's path is its current 1-based position. A mutation that has no single
path (``insert``, ``sort``, ``reverse``, slice assignment) rewrites the
whole list in one request. A container removed from its parent (``pop``,
``del``, replaced) is detached: it keeps its data and stops writing.
Assigning a container stores a copy of it, as the bucket always does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, SupportsIndex

from . import paths
from .bucket import KVBucket, update_pairs

_NO_DEFAULT: Any = object()


class _Live:
    """The place a live container holds in the bucket: its parent and its key there."""

    _bucket: KVBucket | None
    _parent: _Live | None
    _key: str

    def _bind(self, bucket: KVBucket | None, parent: _Live | None, key: str) -> None:
        self._bucket = bucket
        self._parent = parent
        self._key = key

    def _path(self) -> str | None:
        """This container's full path in the bucket, or None once detached."""
        if self._bucket is None:
            return None
        parent = self._parent
        if parent is None:
            return self._key
        above = parent._path()
        if above is None:
            return None
        if isinstance(parent, LiveList):
            for index, item in enumerate(parent):
                if item is self:
                    return f"{above}/{index + 1}"
            return None
        return f"{above}/{self._key}"

    def _detach(self) -> None:
        self._bucket = None
        self._parent = None

    def _wrap(self, key: str, value: Any) -> Any:
        """``value`` (already this container's own copy) as a live child at ``key``."""
        return live(self._bucket, value, self, key)


def live(bucket: KVBucket | None, value: Any, parent: _Live | None, key: str) -> Any:
    """``value`` with every ``dict`` and ``list`` in it made live (scalars as they are)."""
    kind = type(value)
    if kind is dict or kind is LiveDict:
        return LiveDict(bucket, value, parent, key)
    if kind is list or kind is LiveList:
        return LiveList(bucket, value, parent, key)
    return value


def plain(value: Any) -> Any:
    """A deep copy of ``value`` as plain ``dict``/``list`` (no live container left)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def _detach(value: Any) -> None:
    if isinstance(value, _Live):
        value._detach()


class LiveDict(_Live, dict[str, Any]):
    """A ``dict`` read from a :class:`WriteBackBucket`; each mutation writes its path."""

    def __init__(
        self, bucket: KVBucket | None, data: dict[str, Any], parent: _Live | None, key: str
    ) -> None:
        self._bind(bucket, parent, key)
        dict.__init__(self, ((name, live(bucket, item, self, name)) for name, item in data.items()))

    def _child(self, key: object) -> str | None:
        """The full path of child ``key`` (checked as a segment), or None when detached."""
        if type(key) is not str:
            raise TypeError(f"object keys must be str, not {type(key).__name__} ({key!r})")
        paths.check_segment(key)
        path = self._path()
        return None if path is None else f"{path}/{key}"

    def __setitem__(self, key: str, value: Any) -> None:
        full = self._child(key)
        new = plain(value)
        if full is not None and self._bucket is not None:
            self._bucket._store(full, new)
        _detach(dict.get(self, key))
        dict.__setitem__(self, key, self._wrap(key, new))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        full = self._child(key)
        if full is not None and self._bucket is not None:
            self._bucket._pop(full)
        _detach(dict.pop(self, key))

    def pop(self, key: str, default: Any = _NO_DEFAULT) -> Any:
        """Remove ``key`` (one request) and return its value, detached."""
        if key not in self:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        value = dict.__getitem__(self, key)
        del self[key]
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last ``(key, value)`` pair (one request)."""
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self.keys()))
        return key, self.pop(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``self[key]``, first storing ``default`` there (one request) if absent."""
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set every pair in one atomic request."""
        pairs = [(key, plain(value)) for key, value in update_pairs(other, kwargs)]
        if not pairs:
            return
        batch = [(self._child(key), value) for key, value in pairs]
        path = self._path()
        if path is not None and self._bucket is not None:
            self._bucket._store_many([(full, value) for full, value in batch if full], path)
        for key, value in pairs:
            _detach(dict.get(self, key))
            dict.__setitem__(self, key, self._wrap(key, value))

    def __ior__(self, other: Any) -> LiveDict:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        """Empty the object (one request)."""
        path = self._path()
        if path is not None and self._bucket is not None:
            self._bucket._store(path, {})
        for item in dict.values(self):
            _detach(item)
        dict.clear(self)

    def copy(self) -> dict[str, Any]:
        """A plain deep copy."""
        return plain(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        return (dict, (plain(self),))


class LiveList(_Live, list[Any]):
    """A ``list`` read from a :class:`WriteBackBucket`; each mutation writes its path."""

    def __init__(
        self, bucket: KVBucket | None, data: list[Any], parent: _Live | None, key: str
    ) -> None:
        self._bind(bucket, parent, key)
        list.__init__(self, (live(bucket, item, self, "") for item in data))

    def _send(self, write: Callable[[KVBucket, str], Any]) -> None:
        """Run ``write(bucket, path)`` unless this list is detached."""
        path = self._path()
        if path is not None and self._bucket is not None:
            write(self._bucket, path)

    def _index(self, index: SupportsIndex, message: str) -> int:
        position = index.__index__()
        length = len(self)
        if position < 0:
            position += length
        if not 0 <= position < length:
            raise IndexError(message)
        return position

    def _replace(self, items: list[Any]) -> None:
        """Write the whole list as ``items`` (one request), then hold them."""
        new = plain(items)
        self._send(lambda bucket, path: bucket._store(path, new))
        for item in list.__iter__(self):
            _detach(item)
        list.__init__(self, (live(self._bucket, item, self, "") for item in new))

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            items = plain(list(self))
            items[index] = value
            self._replace(items)
            return
        position = self._index(index, "list assignment index out of range")
        new = plain(value)
        self._send(lambda bucket, path: bucket._store(f"{path}/{position + 1}", new))
        _detach(list.__getitem__(self, position))
        list.__setitem__(self, position, live(self._bucket, new, self, ""))

    def __delitem__(self, index: Any) -> None:
        if isinstance(index, slice):
            items = plain(list(self))
            del items[index]
            self._replace(items)
            return
        position = self._index(index, "list assignment index out of range")
        self._send(lambda bucket, path: bucket._pop(f"{path}/{position + 1}"))
        _detach(list.pop(self, position))

    def append(self, value: Any) -> None:
        """Store ``value`` one past the end (one request)."""
        new = plain(value)
        position = len(self) + 1
        self._send(lambda bucket, path: bucket._store(f"{path}/{position}", new))
        list.append(self, live(self._bucket, new, self, ""))

    def extend(self, items: Iterable[Any]) -> None:
        """Append every item in one atomic request."""
        new = [plain(item) for item in items]
        if not new:
            return
        start = len(self) + 1

        def write(bucket: KVBucket, path: str) -> None:
            batch = [(f"{path}/{start + n}", item) for n, item in enumerate(new)]
            bucket._store_many(batch, path)

        self._send(write)
        list.extend(self, (live(self._bucket, item, self, "") for item in new))

    def __iadd__(self, items: Iterable[Any]) -> LiveList:  # type: ignore[misc]
        self.extend(items)
        return self

    def __imul__(self, times: SupportsIndex) -> LiveList:
        self._replace(plain(list(self)) * times)
        return self

    def insert(self, index: SupportsIndex, value: Any) -> None:
        """Insert ``value`` (the whole list is written, in one request)."""
        items = plain(list(self))
        items.insert(index, value)
        self._replace(items)

    def pop(self, index: SupportsIndex = -1) -> Any:
        """Remove and return an item (one request), detached."""
        if not self:
            raise IndexError("pop from empty list")
        position = self._index(index, "pop index out of range")
        value = list.__getitem__(self, position)
        del self[position]
        return value

    def remove(self, value: Any) -> None:
        """Remove the first item equal to ``value`` (one request)."""
        for position, item in enumerate(self):
            if item == value:
                del self[position]
                return
        raise ValueError("list.remove(x): x not in list")

    def clear(self) -> None:
        """Empty the list (one request)."""
        self._replace([])

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        """Sort (the whole list is written, in one request)."""
        items = plain(list(self))
        items.sort(key=key, reverse=reverse)
        self._replace(items)

    def reverse(self) -> None:
        """Reverse (the whole list is written, in one request)."""
        self._replace(plain(list(self))[::-1])

    def copy(self) -> list[Any]:
        """A plain deep copy."""
        return plain(self)  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        return (list, (plain(self),))


class WriteBackBucket(KVBucket):
    """A :class:`KVBucket` whose reads return live containers that write through.

    Opt in to it as to ``shelve``'s ``writeback=True``; the default
    :class:`KVBucket` hands out copies. Arguments are :class:`KVBucket`'s.
    ``[]``, ``get``, ``setdefault``, ``items()`` and ``values()`` give live
    values; ``copy()`` and pickling give plain ones.
    """

    def _give(self, key: str, value: Any) -> Any:
        """``value`` read at ``key`` (already the caller's copy), made live."""
        return live(self, value, None, self._full(key))

    def __getitem__(self, key: str) -> Any:
        return self._give(key, super().__getitem__(key))

    def _hand_out(self, content: dict[str, Any]) -> dict[str, Any]:
        """The values ``items()`` and ``values()`` iterate, made live."""
        return {key: self._give(key, value) for key, value in content.items()}

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` (live) if present, else ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: str, default: Any = None) -> Any:
        """As :meth:`KVBucket.setdefault`, returning the value live."""
        return self._give(key, super().setdefault(key, default))
