"""Following a bucket path's changes over a blocking stream.

:class:`Watch` opens the change feed with :class:`~kvpio_mapping.transport.Transport`,
reads it line by line and yields what :class:`~kvpio_mapping.changes.Follow`
(the feed's rules, shared with the asyncio watch) makes of it. It reconnects
by itself and can be stopped from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import requests

from .changes import FATAL, READ_TIMEOUT, Change, Follow
from .errors import TransportError
from .paths import Path
from .transport import Transport


class Watch(Iterator[Change]):
    """The changes at or below one bucket path, as an endless iterator.

    ``revision`` resumes after that revision instead of starting with a
    snapshot; ``snapshot=False`` starts with nothing (a lost resume then
    yields a ``reset``). ``on_ready`` is called each time the stream has
    caught up with the server, ``on_down`` each time it is lost. Stop it with
    :meth:`close`, from any thread; the iteration then ends.
    Raises :class:`~kvpio_mapping.errors.AuthenticationError` when the account
    is deleted or the key revoked.
    """

    def __init__(
        self,
        transport: Transport,
        path: Path = (),
        *,
        revision: int | None = None,
        snapshot: bool = True,
        on_ready: Callable[[bool], None] | None = None,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._follow = Follow(path, revision, snapshot)
        self._on_ready = on_ready
        self._on_down = on_down
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._lines: Iterator[bytes] | None = None

    @property
    def revision(self) -> int | None:
        """The last revision whose changes were all read (None before the first)."""
        return self._follow.revision

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        follow = self._follow
        while True:
            found = follow.next()
            if isinstance(found, Change):
                return found
            if found is not None:
                if self._on_ready is not None:
                    # Called in order: every change before the ready mark is out already.
                    self._on_ready(found.resumed)
                continue
            if self._stop.is_set() or follow.stopped:
                raise StopIteration
            try:
                lines = self._lines or self._connect()
                line = next(lines, None)
                if line is None:
                    follow.ended()
                follow.receive(line)
            except FATAL:
                raise
            except (TransportError, ValueError, requests.RequestException, OSError):
                self._lost()

    def close(self) -> None:
        """Stop watching: the iteration ends (a blocked ``next`` returns within a moment)."""
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            shutdown = getattr(response.raw, "shutdown", None)
            try:
                if shutdown is not None:
                    shutdown()
                else:
                    response.close()
            except (OSError, ValueError, RuntimeError):
                pass

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _connect(self) -> Iterator[bytes]:
        response = self._transport.stream(self._follow.request(), READ_TIMEOUT)
        with self._lock:
            self._response = response
        self._follow.opened(response)
        if self._stop.is_set():
            response.close()
        self._lines = response.iter_lines(chunk_size=None, delimiter=b"\n")
        return self._lines

    def _lost(self) -> None:
        """Forget the connection, say so, and wait a little before the next attempt."""
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()
        self._lines = None
        pause = self._follow.lost()
        if self._on_down is not None:
            self._on_down()
        self._stop.wait(pause)
