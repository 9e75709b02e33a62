"""``TemplateStore``: the bucket's Jinja2 templates as a mapping of name to rendered text."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import suppress
from typing import Any, TypeVar

from cachetools import TTLCache

from . import operations, paths, protocol, values
from .cache import CacheInfo
from .changes import Change
from .errors import InvalidPathError
from .forks import reset_after_fork
from .operations import Flow, run
from .paths import MISSING
from .transport import Transport
from .watch import Watch

_T = TypeVar("_T")


class RenderCache:
    """Rendered texts by template name, each for ``ttl`` seconds, never older than a write.

    Each text is kept with the top-level names its rendering used, so a
    write to the bucket drops exactly the renderings it may change; a
    generation counter stops a rendering fetched before a write from being
    stored after it. Thread-safe; both template stores use it.
    """

    def __init__(self, ttl: float, maxsize: int, timer: Callable[[], float]) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self.enabled = ttl > 0 and maxsize > 0
        self.timer = timer
        self.lock = threading.Lock()
        self._renders: TTLCache[str, tuple[str, frozenset[str]]] = TTLCache(
            max(maxsize, 1), ttl, timer=timer
        )
        self._generation = 0
        self._hits = 0
        self._misses = 0
        reset_after_fork(self)

    def lookup(self, name: str) -> tuple[str | None, int]:
        """The cached text of ``name`` (None on a miss) and the generation to store under."""
        with self.lock:
            cached = self._renders.get(name)
            if cached is not None:
                self._hits += 1
                return cached[0], self._generation
            self._misses += 1
            return None, self._generation

    def store(self, name: str, text: str, used: frozenset[str], generation: int) -> None:
        """Keep ``text`` unless something was written since ``generation``."""
        if self.enabled:
            with self.lock:
                if generation == self._generation:
                    self._renders[name] = (text, used)

    def forget(self, name: str) -> None:
        """Drop the rendering of ``name`` (its source was written)."""
        with self.lock:
            self._generation += 1
            self._renders.pop(name, None)

    def bucket_changed(self, path: str | None) -> None:
        """Drop renderings that used the top-level key written at ``path`` (all if None)."""
        with self.lock:
            self._generation += 1
            if path is None:
                self._renders.clear()
                return
            top = path.split("/", 1)[0]
            for name in [n for n, (_, used) in self._renders.items() if protocol.uses(used, top)]:
                self._renders.pop(name, None)

    def info(self) -> CacheInfo:
        """Hits, misses, maximum and current size."""
        with self.lock:
            size = len(self._renders)
            return CacheInfo(self._hits, self._misses, int(self._renders.maxsize), size)

    def _after_fork(self) -> None:
        """Start empty with a new lock: another thread of the parent may have held the old one."""
        self.lock = threading.Lock()
        self._renders = TTLCache(max(self.maxsize, 1), self.ttl, timer=self.timer)


# The template operations as flows (see kvpio_mapping.operations), for both stores.


def _impossible(name: object) -> bool:
    """Whether ``name`` can never name a stored template (not a ``str``, or not a valid
    path): reads answer it as ``dict`` answers an absent key, without a request. An
    unhashable ``name`` raises ``TypeError``, as it does for ``dict``."""
    try:
        paths.parse(name)
    except (TypeError, InvalidPathError):
        hash(name)
        return True
    return False


def _fetch(name: object, raw: bool = False, data: bytes | None = None) -> Flow[Any]:
    """A template's text (rendered, or its source) and the names it used; KeyError if none."""
    if _impossible(name):
        raise KeyError(name)
    answer = yield protocol.template(name, raw=raw, data=data)
    found = protocol.text(answer)
    if found is MISSING:
        raise KeyError(name)
    return found, protocol.template_names(answer)


def rendered(cache: RenderCache, name: str, data: dict[str, Any] | None = None) -> Flow[str]:
    """``name`` rendered with the bucket's data (cached), or with ``data`` overriding
    top-level names (not cached)."""
    if data is not None:
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, not {type(data).__name__}")
        text, _used = yield from _fetch(name, data=values.encode(data))
        return text  # type: ignore[no-any-return]
    generation = 0
    if cache.enabled:
        cached, generation = cache.lookup(name)
        if cached is not None:
            return cached
    text, used = yield from _fetch(name)
    cache.store(name, text, used, generation)
    return text  # type: ignore[no-any-return]


def rendering(name: str) -> Flow[tuple[str | None, frozenset[str], int]]:
    """``name`` rendered now (None if there is no such template), the top-level names it
    used, and the bucket revision it was rendered at."""
    answer = yield protocol.template(name)
    found = protocol.text(answer)
    if found is MISSING:
        listing = yield protocol.list_templates()
        protocol.check(listing)
        return None, frozenset(), protocol.revision(listing)
    return found, protocol.template_names(answer), protocol.revision(answer)


def source(name: str) -> Flow[str]:
    """The template's stored source, unrendered."""
    text, _used = yield from _fetch(name, raw=True)
    return text  # type: ignore[no-any-return]


def exists(name: object) -> Flow[bool]:
    """Whether a template ``name`` is stored."""
    try:
        yield from _fetch(name, raw=True)
    except KeyError:
        return False
    return True


def store(cache: RenderCache, name: str, text: str) -> Flow[None]:
    """Store the source ``text`` as ``name``."""
    if not isinstance(text, str):
        raise TypeError(f"a template source must be str, not {type(text).__name__}")
    request = protocol.write_template(name, text)
    try:
        protocol.done((yield request))
    finally:
        cache.forget(name)


def remove(cache: RenderCache, name: str) -> Flow[None]:
    """Delete the template ``name``; KeyError if there is none."""
    if _impossible(name):
        raise KeyError(name)
    request = protocol.pop_template(name)
    try:
        found = protocol.text((yield request))
    finally:
        cache.forget(name)
    if found is MISSING:
        raise KeyError(name)


def clear(cache: RenderCache) -> Flow[None]:
    """Delete every template, without rendering them (one may not render)."""
    for name in (yield from operations.keys_of(protocol.list_templates())):
        with suppress(KeyError):  # deleted meanwhile
            yield from remove(cache, name)


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
        self._cache = RenderCache(ttl, maxsize, timer)

    @property
    def _lock(self) -> threading.Lock:
        return self._cache.lock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._transport.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only, as :class:`KVBucket` pickles (no cache, lock or clock)."""
        cache = self._cache
        return {"transport": self._transport, "ttl": cache.ttl, "maxsize": cache.maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["transport"], ttl=state["ttl"], maxsize=state["maxsize"])  # type: ignore[misc]

    def _run(self, flow: Flow[_T]) -> _T:
        return run(flow, self._transport.send)

    def watch(self, name: str) -> TemplateWatch:
        """An iterator of ``name`` rendered now, then again each time the template or a
        top-level key it uses changes (None while there is no such template).

        ``.close()`` it from any thread to end the iteration.
        """
        protocol.template_target(name)
        return TemplateWatch(self._transport, name)

    def __getitem__(self, name: str) -> str:
        return self._run(rendered(self._cache, name))

    def render(self, name: str, data: dict[str, Any] | None = None) -> str:
        """Render ``name`` with ``data`` supplying or overriding top-level names (not cached)."""
        return self._run(rendered(self._cache, name, data))

    def source(self, name: str) -> str:
        """The template's stored source, unrendered."""
        return self._run(source(name))

    def __setitem__(self, name: str, text: str) -> None:
        self._run(store(self._cache, name, text))

    def __delitem__(self, name: str) -> None:
        self._run(remove(self._cache, name))

    def clear(self) -> None:
        """Delete every template, without rendering them (one may not render)."""
        self._run(clear(self._cache))

    def popitem(self) -> tuple[str, str]:
        """Remove the last-stored template, returning its name and rendering, as
        ``dict.popitem`` does its last pair; ``KeyError`` if there is none."""
        for name in reversed(list(self)):
            try:
                return name, self.pop(name)
            except KeyError:  # deleted meanwhile by another client
                continue
        raise KeyError("popitem(): no templates")

    def __iter__(self) -> Iterator[str]:
        return iter(self._run(operations.keys_of(protocol.list_templates())))

    def __len__(self) -> int:
        return len(self._run(operations.keys_of(protocol.list_templates())))

    def __contains__(self, name: object) -> bool:
        return self._run(exists(name))

    def _forget(self, name: str) -> None:
        self._cache.forget(name)

    def bucket_changed(self, path: str | None) -> None:
        """Drop renderings that used the top-level key written at ``path`` (all if None)."""
        self._cache.bucket_changed(path)

    def invalidate(self, name: str | None = None) -> None:
        """Drop the cached rendering of ``name``, or all of them."""
        if name is None:
            self.bucket_changed(None)
        else:
            self._forget(name)

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current size of the rendered-text cache."""
        return self._cache.info()


class TemplateFollow:
    """A template watch's rules, with no I/O (both template stores' watches follow them):
    which changes call for a new rendering, and which renderings are yielded (not one
    equal to the last yielded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._names: frozenset[str] = frozenset()
        self._last: str | None = None
        self._started = False

    def rendered(self, text: str | None, names: frozenset[str]) -> bool:
        """Take a rendering (None: no such template) and the top-level names it used;
        whether to yield it."""
        if text is not None:
            self._names = names
        new = not self._started or text != self._last
        self._started = True
        self._last = text
        return new

    def relevant(self, change: Change) -> bool:
        """Whether ``change`` may change the rendering: the template itself, a top-level
        key it used, the whole bucket, or changes lost."""
        if change.kind == "template":
            return change.path == self.name
        top = change.path.split("/", 1)[0]
        return change.kind == "reset" or not top or protocol.uses(self._names, top)


class TemplateWatch(Iterator[str | None]):
    """See :meth:`TemplateStore.watch`: follows the bucket's feed, renders on relevant changes.

    A rendering equal to the last one yielded is not yielded again.
    """

    def __init__(self, transport: Transport, name: str) -> None:
        self._transport = transport
        self._follow = TemplateFollow(name)
        self._watch: Watch | None = None
        self._closed = False

    def __iter__(self) -> TemplateWatch:
        return self

    def __next__(self) -> str | None:
        follow = self._follow
        if self._watch is None:
            if self._closed:
                raise StopIteration
            text, names, revision = run(rendering(follow.name), self._transport.send)
            follow.rendered(text, names)
            # Resuming after the rendering's revision: nothing between is missed.
            self._watch = Watch(self._transport, revision=revision, snapshot=False)
            if self._closed:
                self._watch.close()
            return text
        for change in self._watch:
            if follow.relevant(change):
                text, names, _ = run(rendering(follow.name), self._transport.send)
                if follow.rendered(text, names):
                    return text
        raise StopIteration

    def close(self) -> None:
        """End the iteration (from any thread)."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
