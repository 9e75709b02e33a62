"""Following a bucket path's changes: the client side of the change feed.

:class:`Watch` reads the Server-Sent Events of docs/protocol.md ("Live") and
yields them as :class:`Change` tuples. It reconnects by itself, resuming with
``Last-Event-ID`` from the last revision it completed, and can be stopped
from another thread. The events of one revision are yielded together, once
the one carrying the revision's ``id`` arrives, so a connection cut in the
middle of a commit never yields half of it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Literal, NamedTuple

import requests

from . import paths, values
from .errors import AuthenticationError, ProtocolError, RequestError, TransportError
from .paths import Path
from .protocol import check
from .transport import Transport

READ_TIMEOUT: Final = 30.0
"""Seconds without a byte (the server pings every few) after which a stream is reopened."""

MAX_PAUSE: Final = 2.0
"""Longest wait between two attempts to reconnect."""

ChangeKind = Literal["snapshot", "put", "delete", "template", "reset"]


class Change(NamedTuple):
    """One change seen by a watch.

    ``snapshot``: ``value`` is the whole value at ``path`` (the watched path)
    now, replacing anything known of it; ``put``: ``value`` is now at ``path``;
    ``delete``: nothing is at ``path`` any more (later items of a list move
    up); ``template``: the template named ``path`` is now ``value`` (None when
    deleted). ``reset`` only comes to watches made without snapshots: changes
    were lost, forget everything known. ``path`` is a full bucket path
    (``""`` for the root); ``revision`` is the account's after the change.
    """

    kind: ChangeKind
    path: str
    value: Any
    revision: int


class Event(NamedTuple):
    """One Server-Sent Event: its type, data and ``id`` (None when it sets none)."""

    event: str
    data: str
    id: str | None


def parse_events(lines: Iterable[bytes | str]) -> Iterator[Event]:
    """The events of an ``text/event-stream`` body, line by line (sans I/O).

    A block with an ``id`` and no data (a keep-alive) is an event of type ``""``.
    """
    event, id_ = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line:
            if data or id_ is not None:
                yield Event(event or ("message" if data else ""), "\n".join(data), id_)
            event, data, id_ = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            id_ = value


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
        self._path = path
        self._base = paths.join(path)
        self.revision = revision
        self._snapshot = snapshot
        self._on_ready = on_ready
        self._on_down = on_down
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._events: Iterator[Event] | None = None
        self._ready: deque[Change | bool] = deque()
        self._held: list[Change] = []
        self._pause = 0.0

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        while True:
            while not self._ready:
                if self._stop.is_set():
                    raise StopIteration
                try:
                    self._read_one()
                except (AuthenticationError, ProtocolError, RequestError):
                    raise
                except (TransportError, requests.RequestException, OSError, ValueError):
                    # Cut, garbled or refused for now: reconnect and resume.
                    self._lost()
            found = self._ready.popleft()
            if isinstance(found, Change):
                return found
            if self._on_ready is not None:
                # Called in order: every change before the ready event is out already.
                self._on_ready(found)

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

    def _connect(self) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if self.revision is not None:
            headers["Last-Event-ID"] = str(self.revision)
        target = "bucket/" + paths.url_quote(self._path) if self._path else "bucket/"
        if not self._snapshot:
            target += "?snapshot=false"
        response = self._transport.stream(target, headers, READ_TIMEOUT)
        if response.status_code == 503:
            response.close()
            wait = response.headers.get("Retry-After", "")
            self._pause = float(wait) if wait.isdigit() else MAX_PAUSE
            raise TransportError("the server has too many streams open")
        check(response)
        with self._lock:
            self._response = response
        if self._stop.is_set():
            response.close()
        return parse_events(response.iter_lines(chunk_size=None, delimiter=b"\n"))

    def _lost(self) -> None:
        """Forget the connection, say so, and wait a little before the next attempt."""
        with self._lock:
            response, self._response = self._response, None
        if response is not None:
            response.close()
        self._events = None
        self._held = []
        if self._on_down is not None:
            self._on_down()
        self._stop.wait(self._pause)
        self._pause = min(max(self._pause * 2, 0.05), MAX_PAUSE)

    def _read_one(self) -> None:
        """Read one event, queueing the changes of a revision once it is complete."""
        if self._events is None:
            self._events = self._connect()
        found = next(self._events, None)
        if found is None:
            raise TransportError("the stream ended")
        kind, data, id_ = found
        body = values.decode(data, values.READ_NESTING) if data else {}
        if kind == "end":
            reason = body.get("reason")
            if reason in ("account deleted", "key revoked"):
                self._stop.set()
                raise AuthenticationError(f"the change feed ended: {reason}")
            self._pause = 0.0
            raise TransportError(f"the change feed ended: {reason}")
        if kind == "ready":
            self._pause = 0.0
            self._ready.append(self.revision is not None)
            self.revision = int(id_) if id_ is not None else self.revision
            return
        change = self._change(kind, body)
        if change is not None:
            self._held.append(change)
        if id_ is not None:
            revision = int(id_)
            self.revision = revision
            self._ready.extend(held._replace(revision=revision) for held in self._held)
            self._held = []

    def _change(self, kind: str, body: dict[str, Any]) -> Change | None:
        if kind == "snapshot":
            if "data" in body:
                return Change("snapshot", self._base, body["data"], 0)
            if body.get("missing"):
                return Change("delete", self._base, None, 0)
            return Change("reset", self._base, None, 0) if body.get("reset") else None
        if kind == "template":
            return Change("template", body["name"], body.get("source"), 0)
        relative = body.get("path")
        if not isinstance(relative, str):
            return None
        full = f"{self._base}/{relative}" if self._base and relative else self._base or relative
        if kind == "put":
            return Change("put", full, body.get("data"), 0)
        return Change("delete", full, None, 0) if kind == "delete" else None
