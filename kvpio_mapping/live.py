"""The live cache: one background change feed that keeps a bucket's read cache coherent.

A daemon thread follows the whole bucket (without snapshots) and drops the
cached entries each change touches, telling the listeners too (the template
renderings of the same connection: of a changed template, or of templates
using a changed key). While the feed is connected
and caught up the cache is *live*: entries stay until a change drops them.
When the feed is lost the cache falls back to its TTL until the feed
resumes; a resume the change log can no longer serve empties the cache.
A forked child starts its own feed on its first cache miss; the parent's
thread does not exist there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from .cache import PathCache
from .errors import KvpioError
from .forks import reset_after_fork
from .transport import Transport
from .watch import Change, Watch

log = logging.getLogger("kvpio")

Listener = Callable[[str | None], None]


class LiveFeed:
    """Follows the bucket of ``transport`` and drops what changes from ``cache``."""

    def __init__(
        self,
        transport: Transport,
        cache: PathCache,
        listeners: list[Listener],
        templates: list[Listener],
    ) -> None:
        self._transport = transport
        self._cache = cache
        self._listeners = listeners
        self._templates = templates
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
            self._watch = Watch(
                self._transport, snapshot=False, on_ready=self._ready, on_down=self._down
            )
            threading.Thread(
                target=self._run, args=(self._watch,), name="kvpio-live", daemon=True
            ).start()

    def close(self) -> None:
        """Stop following; the cache keeps the TTL rule from now on."""
        with self._lock:
            self._closed = True
            watch = self._watch
        self._cache.live = False
        if watch is not None:
            watch.close()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._watch = None

    def _run(self, watch: Watch) -> None:
        try:
            for change in watch:
                self._apply(change)
        except KvpioError as exc:
            log.warning("the live cache follows no more changes: %s", exc)
        finally:
            self._cache.live = False

    def _ready(self, resumed: bool) -> None:
        if not resumed:
            # Entries cached before the feed started may predate changes it will never show.
            self._forget(None)
        self._cache.live = True

    def _down(self) -> None:
        self._cache.live = False

    def _apply(self, change: Change) -> None:
        if change.kind == "template":
            for listener in self._templates:
                listener(change.path)
            return
        path: str | None = change.path or None
        if change.kind == "reset":
            path = None
        elif change.kind == "delete" and path is not None:
            parent, _, last = path.rpartition("/")
            if last.isascii() and last.isdigit():
                # Removing a list item moves the later ones up: forget the whole list.
                path = parent or None
        self._forget(path)

    def _forget(self, path: str | None) -> None:
        self._cache.invalidate(path)
        for listener in self._listeners:
            listener(path)
