"""The live cache: a change feed that keeps a bucket's read cache coherent.

:class:`Coherence` is what the feed's changes do (no I/O, shared by both
clients): each change drops the cached entries it touches and tells the
listeners (the template renderings of the same connection: of a changed
template, or of templates using a changed key). While the feed is connected
and caught up the cache is *live*: entries stay until a change drops them.
When the feed is lost the cache falls back to its TTL until the feed
resumes; a resume the change log can no longer serve empties the cache.

:class:`LiveFeed` follows the whole bucket (without snapshots) in a daemon
thread for ``KVBucket``; :class:`~kvpio_mapping.async_live.AsyncLiveFeed`
does it in a task for ``AsyncKVBucket``. A forked child starts its own feed
on its first cache miss; the parent's thread does not exist there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from . import paths
from .cache import PathCache
from .changes import Change
from .errors import KvpioError
from .forks import reset_after_fork
from .transport import Transport
from .watch import Watch

log = logging.getLogger("kvpio")

Listener = Callable[[str | None], None]


class Coherence:
    """Applies a feed's changes to ``cache``, ``listeners`` (told of changed bucket paths)
    and ``templates`` (told of changed template names)."""

    def __init__(
        self, cache: PathCache, listeners: list[Listener], templates: list[Listener]
    ) -> None:
        self.cache = cache
        self._listeners = listeners
        self._templates = templates

    def ready(self, resumed: bool) -> None:
        """The feed has caught up: the cache is live from now on."""
        if not resumed:
            # Entries cached before the feed started may predate changes it will never show.
            self._forget(None)
        self.cache.live = True

    def down(self) -> None:
        """The feed is lost or stopped: the TTL rule holds again."""
        self.cache.live = False

    def apply(self, change: Change) -> None:
        """Drop what ``change`` makes stale."""
        if change.kind == "template":
            for listener in self._templates:
                listener(change.path)
            return
        path: str | None = change.path or None
        if change.kind == "reset":
            path = None
        elif change.kind == "delete" and path is not None:
            path = paths.deleted_reach(path)
        self._forget(path)

    def _forget(self, path: str | None) -> None:
        self.cache.invalidate(path)
        for listener in self._listeners:
            listener(path)


class LiveFeed:
    """Follows the bucket of ``transport`` in a daemon thread, applying its changes."""

    def __init__(self, transport: Transport, coherence: Coherence) -> None:
        self._transport = transport
        self._coherence = coherence
        self._lock = threading.Lock()
        self._closed = False
        self._pid = 0
        self._watch: Watch | None = None
        reset_after_fork(self)
        self.ensure()

    def ensure(self) -> None:
        """Start the feed's thread unless it runs in this process (cheap when it does)."""
        if self._pid == os.getpid() or self._closed:
            return
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._pid = os.getpid()
            coherence = self._coherence
            self._watch = Watch(
                self._transport, snapshot=False, on_ready=coherence.ready, on_down=coherence.down
            )
            threading.Thread(
                target=self._run, args=(self._watch,), name="kvpio-live", daemon=True
            ).start()

    def close(self) -> None:
        """Stop following; the cache keeps the TTL rule from now on."""
        with self._lock:
            self._closed = True
            watch = self._watch
        self._coherence.down()
        if watch is not None:
            watch.close()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._watch = None

    def _run(self, watch: Watch) -> None:
        try:
            for change in watch:
                self._coherence.apply(change)
        except KvpioError as exc:
            log.warning("the live cache follows no more changes: %s", exc)
        finally:
            self._coherence.down()
