"""The bucket's operations as sans-IO flows, and the client state its mappings share.

Each operation is a generator that yields the :class:`~kvpio_mapping.protocol.Request`
it needs sent, receives the answer, keeps the cache right and returns the
result; it does no I/O. :func:`run` drives a flow over a blocking transport
and :func:`run_async` over an asyncio one, so ``KVBucket`` and
``AsyncKVBucket`` share every rule of when to ask the server, what to ask
and what the cache may keep (as httpx drives its auth flows, and h11 speaks
HTTP, with no I/O of their own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol, TypeVar

from . import paths, protocol, values
from .cache import NOT_CACHED, CacheInfo, PathCache
from .errors import InvalidPathError
from .live import Coherence
from .paths import MISSING
from .protocol import Answer, Request

_T = TypeVar("_T")
Flow = Generator[Request, Answer, _T]
"""An operation: yields requests, is sent their answers, returns its result."""
WriteListener = Callable[[str | None], None]
"""Called with the full path of each write (None: the whole bucket), whatever its outcome."""

COUNTER_KINDS: Final = (int, float)


class Feed(Protocol):
    """A running change feed keeping a cache coherent (a thread or a task: see live.py)."""

    def ensure(self) -> None:
        """Start following in this process (and event loop) unless it already does."""

    def close(self) -> None:
        """Stop following; the cache keeps the TTL rule from now on."""


class ClientState:
    """What a bucket, its views, its template store and its connection share.

    The transport (blocking or asyncio), the path cache, the listeners told
    of every write, so a cache elsewhere (rendered templates) can drop what
    the write made stale, the listeners told of changed templates, and the
    live feed keeping the cache coherent (None unless the bucket is live).
    """

    def __init__(self, transport: Any, cache: PathCache) -> None:
        self.transport = transport
        self.cache = cache
        self.listeners: list[WriteListener] = []
        self.template_listeners: list[WriteListener] = []
        self.feed: Feed | None = None
        self.counts: bool | None = None
        """Whether the server answers ``count=true`` (None until an answer tells)."""

    def add_listener(self, listener: WriteListener) -> None:
        """Call ``listener(path)`` after each write through this state (None: all paths)."""
        self.listeners.append(listener)

    def add_template_listener(self, listener: WriteListener) -> None:
        """Call ``listener(name)`` when the live feed sees the template ``name`` change."""
        self.template_listeners.append(listener)

    def go_live(self, follow: Callable[[Any, Coherence], Feed]) -> None:
        """Follow the bucket's change feed so cached reads stay until a change drops them;
        ``follow(transport, coherence)`` starts the thread or task that does."""
        if not self.cache.enabled:
            raise ValueError("live=True needs a cache: ttl > 0 and maxsize > 0")
        coherence = Coherence(self.cache, self.listeners, self.template_listeners)
        self.feed = follow(self.transport, coherence)

    @property
    def live(self) -> bool:
        """Whether this state follows the change feed (see :meth:`go_live`)."""
        return self.feed is not None

    def ensure_live(self) -> None:
        """Restart the feed if it is not running here (a forked child, an event loop)."""
        if self.feed is not None:
            self.feed.ensure()

    def close_live(self) -> None:
        """Stop following the feed; the cache keeps the TTL rule from now on."""
        if self.feed is not None:
            self.feed.close()

    @contextmanager
    def writing(self, path: str | None) -> Iterator[None]:
        """Forget cached reads of ``path`` (None: all) and tell the listeners, whatever the
        write's outcome: it may have reached the server."""
        try:
            with self.cache.writing(path):
                yield
        finally:
            for listener in self.listeners:
                listener(path)


class Rooted:
    """What both bucket clients and their views share: the client state and a root path.

    A view is the same client over the object at a path below the root.
    """

    _state: ClientState
    _root: paths.Path = ()

    def _viewed(self, path: str) -> Any:
        """A new mapping of this class over ``path`` below this one's root, sharing the state."""
        segments = self._root + paths.parse(path)
        paths.check(segments)
        view = object.__new__(type(self))
        view._state = self._state
        view._root = segments
        return view

    def _watched(self, path: str) -> paths.Path:
        """The checked segments of ``path`` below this mapping's root (``''``: the root)."""
        segments = self._root + (paths.parse(path) if path else ())
        if segments:
            paths.check(segments)
        return segments

    @property
    def state(self) -> ClientState:
        """The connection, cache and write listeners this mapping shares with its views."""
        return self._state

    @property
    def url(self) -> str:
        """The server's base URL."""
        return str(self._state.transport.url)

    @property
    def path(self) -> str:
        """The path this mapping is rooted at (``''`` for the whole bucket)."""
        return paths.join(self._root)

    def __repr__(self) -> str:
        root = f", path={self.path!r}" if self._root else ""
        return f"{type(self).__name__}(url={self.url!r}{root})"

    def _full(self, key: object) -> str:
        """The validated full path of ``key`` below this mapping's root."""
        segments = paths.parse(key)
        if self._root:
            segments = self._root + segments
            paths.check(segments)
        return paths.join(segments)

    def _valid(self, key: object) -> str | None:
        """The full path of ``key``, or None for a key that can never be stored.

        Reads answer such a key as ``dict`` answers an absent one (no request);
        an unhashable key raises ``TypeError`` as it does for ``dict``.
        """
        try:
            return self._full(key)
        except (TypeError, InvalidPathError):
            hash(key)
            return None

    def invalidate(self, path: str | None = None) -> None:
        """Drop cached reads of ``path`` (its ancestors and what is below it), or all."""
        cache = self._state.cache
        cache.invalidate(self._full(path) if path is not None else self.path or None)

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maximum and current size of the read cache, and whether it is live."""
        return self._state.cache.info()


def run(flow: Flow[_T], send: Callable[[Request], Any]) -> _T:
    """Drive ``flow`` to its result, sending each request with the blocking ``send``."""
    try:
        request = next(flow)
        while True:
            try:
                answer = send(request)
            except BaseException as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(flow: Flow[_T], send: Callable[[Request], Awaitable[Any]]) -> _T:
    """Drive ``flow`` to its result, awaiting ``send`` for each request."""
    try:
        request = next(flow)
        while True:
            try:
                answer = await send(request)
            except BaseException as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# reads


def read(state: ClientState, full: str) -> Flow[Any]:
    """The shared (uncopied) value at ``full``, or MISSING: cache first, else one GET
    (revalidating an expired copy whose ETag is known)."""
    cache = state.cache
    if cache.enabled:
        found = cache.lookup(full)
        if found is not NOT_CACHED:
            return found
    state.ensure_live()
    generation = cache.generation
    stale = cache.stale(full) if cache.enabled else None
    answer = yield protocol.read(full, stale[0] if stale else None)
    etag: str | None
    value = protocol.value(answer, revalidating=stale is not None)
    if value is protocol.NOT_MODIFIED and stale:
        etag, value = stale
    else:
        etag = answer.headers.get("ETag")
    cache.store(full, value, generation, etag)
    return value


def keys_of(request: Request) -> Flow[list[str]]:
    """The key list a listing request answers."""
    return protocol.keys((yield request))


def keys(root: str) -> Flow[list[str]]:
    """The child keys of the bucket or of the object at ``root``, in one request."""
    return (yield from keys_of(protocol.list_keys(root)))


def length(state: ClientState, root: str) -> Flow[int]:
    """How many keys (a list's items) are at ``root``, ``len()`` of the bucket or a view:
    from the cache when it can tell, else one small count request; 0 when nothing, or
    a scalar, is there. A server that ignores ``count=true`` is asked for the key
    listing from then on."""
    cache = state.cache
    if cache.enabled:
        found = cache.length(root)
        if found is not NOT_CACHED:
            return found  # type: ignore[no-any-return]
    state.ensure_live()
    generation = cache.generation
    if state.counts is False:
        number = len((yield from keys(root)))
    else:
        number, counted = protocol.length((yield protocol.count(root)), not root)
        if counted is not None:
            state.counts = counted
    cache.store_length(root, number, generation)
    return number


def snapshot(state: ClientState, root: str) -> Flow[dict[str, Any]]:
    """The content below ``root`` (a list's items by 1-based position) in one request,
    warming the cache with it. The values are shared: copy what is handed out."""
    cache = state.cache
    generation = cache.generation
    if root:
        found = protocol.value((yield protocol.read(root)))
        cache.store(root, found, generation)
        if type(found) is list:
            return {str(n): item for n, item in enumerate(found, 1)}
        return dict(found) if type(found) is dict else {}  # the cache keeps `found`
    content: dict[str, Any] = protocol.document((yield protocol.snapshot()), dict)
    cache.store_many(iter(content.items()), generation)
    cache.store_length("", len(content), generation)
    return content


def versioned(state: ClientState, full: str) -> Flow[tuple[Any, str | None]]:
    """The value (or MISSING) at exactly ``full`` with its ETag, from the cache when fresh."""
    cache = state.cache
    found: Any = cache.tagged(full, exact=True) if cache.enabled else NOT_CACHED
    if found is not NOT_CACHED:
        _where, value, etag = found
        return value, etag
    generation = cache.generation
    value, etag = protocol.tagged((yield protocol.read(full)))
    cache.store(full, value, generation, etag)
    return value, etag


# writes


def store(state: ClientState, full: str, value: Any) -> Flow[None]:
    """Write ``value`` at ``full`` (checked first: nothing is sent if bad)."""
    body = values.encode(value, addressable=True)
    with state.writing(full):
        protocol.done((yield protocol.write(full, body)))


def store_many(state: ClientState, batch: list[tuple[str, Any]], scope: str | None) -> Flow[None]:
    """Write each ``(full path, value)`` in order, in one atomic request; ``scope`` is the
    path all of them are below (None: the whole bucket), forgotten by the cache."""
    for _, value in batch:
        values.check(value, addressable=True)
    request = protocol.write_many(batch)
    with state.writing(scope):
        protocol.done((yield request))


def pop(state: ClientState, full: str) -> Flow[Any]:
    """Remove ``full`` atomically on the server and return what was there, or MISSING."""
    with state.writing(paths.deleted_reach(full)):
        return protocol.value((yield protocol.pop(full)))


def clear(state: ClientState, root: str) -> Flow[None]:
    """Remove every key (below ``root``, whose object becomes ``{}``)."""
    with state.writing(root or None):
        protocol.done((yield protocol.clear(root)))


def check_number(by: Any) -> None:
    """Refuse an increment that is not an int or a float, or not a JSON number."""
    if type(by) not in COUNTER_KINDS:
        raise TypeError(f"an increment needs an int or a float, not {type(by).__name__}")
    values.check(by)


def increment(state: ClientState, full: str, by: int | float) -> Flow[Any]:
    """Add ``by`` to the number at ``full`` atomically; the new number, which the cache keeps."""
    check_number(by)
    cache = state.cache
    generation = cache.generation
    with state.writing(full):
        answer = yield protocol.operate(full, "increment", values.encode(by))
        total = protocol.document(answer, *COUNTER_KINDS)
    # The write's own invalidation is the only one expected since ``generation``.
    cache.store(full, total, generation + 1, values.etag(answer.content))
    return total


def append(state: ClientState, full: str, value: Any) -> Flow[int]:
    """Add ``value`` at the end of the list at ``full``; its 1-based position."""
    body = values.encode(value)
    with state.writing(full):
        position: int = protocol.document((yield protocol.operate(full, "append", body)), int)
    return position


def merge(state: ClientState, full: str, members: dict[str, Any]) -> Flow[None]:
    """Set each member of ``members`` below the object at ``full``, atomically."""
    if type(members) is not dict:
        raise TypeError(f"merge needs a dict, not {type(members).__name__}")
    for name in members:
        paths.parse(name)
    body = values.encode(members)
    with state.writing(full):
        protocol.done((yield protocol.operate(full, "merge", body)))


def write_if(
    state: ClientState, method: str, full: str, body: bytes | None, etag: str | None
) -> Flow[tuple[bool, Any]]:
    """A write that applies only if ``full`` has ``etag`` (None: nothing there).

    Returns whether it applied and, if not, the current value (or MISSING)
    the 412 carried; the cache learns the outcome, except for a delete that
    may have moved later list items up (it forgets the whole list instead).
    """
    cache = state.cache
    generation = cache.generation
    reach = full if body is not None else paths.deleted_reach(full)
    with state.writing(reach):
        answer = yield protocol.write_if(method, full, body, etag)
        if answer.status_code == 412:
            current, tag = protocol.tagged(answer)
        else:
            protocol.done(answer)
    if answer.status_code == 412:
        cache.store(full, current, generation + 1, tag)
        return False, current
    if body is None:
        if reach == full:
            cache.store(full, MISSING, generation + 1)
    else:
        cache.store(full, values.decode(body), generation + 1, values.etag(body))
    return True, MISSING


def setdefault(state: ClientState, full: str, default: Any) -> Flow[Any]:
    """The shared value at ``full`` if present; else store ``default`` only if still
    absent, atomically, and return it, or what a concurrent writer stored first."""
    found = yield from read(state, full)
    if found is not MISSING:
        return found
    stored, current = yield from write_if(state, "POST", full, values.encode(default), None)
    return default if stored else current


def popitem(state: ClientState, root: str, full_of: Callable[[str], str]) -> Flow[tuple[str, Any]]:
    """Remove and return the last ``(key, value)`` below ``root`` (``full_of`` gives a
    key's full path); KeyError if empty."""
    for key in reversed((yield from keys(root))):
        found = yield from pop(state, full_of(key))
        if found is not MISSING:
            return key, found
    raise KeyError("popitem(): dictionary is empty")
