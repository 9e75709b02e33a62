"""The change feed from the client's side, with no I/O: lines of a stream in, changes out.

:class:`Follow` is one watch's state: which request (re)opens the stream
(``Last-Event-ID`` from the last revision it completed), what each
Server-Sent Event of docs/protocol.md ("Live") does, how long to pause
before reconnecting, and when to give up. The blocking
:class:`~kvpio_mapping.watch.Watch` and the asyncio
:class:`~kvpio_mapping.async_watch.AsyncWatch` only open streams, read lines
and wait, as the flows of :mod:`kvpio_mapping.operations` serve both buckets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal, NamedTuple, NoReturn

from . import paths, protocol, values
from .errors import AuthenticationError, ProtocolError, RequestError, TransportError
from .paths import Path
from .protocol import Answer, Request

READ_TIMEOUT: Final = 30.0
"""Seconds without a byte (the server pings every few) after which a stream is reopened."""

MAX_PAUSE: Final = 2.0
"""Longest wait between two attempts to reconnect."""

FATAL: Final = (AuthenticationError, ProtocolError, RequestError)
"""What ends a watch for good: the key is refused or the server is not a kvpio one. Any
other failure of a stream (cut, garbled, refused for now) means reconnect and resume."""

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


class Ready(NamedTuple):
    """The stream has caught up with the server; ``resumed``: after a revision already seen."""

    resumed: bool


class Event(NamedTuple):
    """One Server-Sent Event: its type, data and ``id`` (None when it sets none)."""

    event: str
    data: str
    id: str | None


class EventParser:
    """Reads a ``text/event-stream`` body line by line; :meth:`feed` returns each event it ends.

    A block with an ``id`` and no data (a keep-alive) is an event of type ``""``.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, raw: bytes | str) -> Event | None:
        """Take one line (without its line break); the event it completes, if any."""
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line:
            event, data, id_ = self._event, self._data, self._id
            self._event, self._data, self._id = "", [], None
            if data or id_ is not None:
                return Event(event or ("message" if data else ""), "\n".join(data), id_)
            return None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None


def parse_events(lines: Iterable[bytes | str]) -> Iterator[Event]:
    """The events of a whole ``text/event-stream`` body, given line by line."""
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


class Follow:
    """The state of one watch of ``path``: feed it lines, take :class:`Change`\\ s and
    :class:`Ready` marks out, in order.

    The events of one revision come out together, once the one carrying the
    revision's ``id`` arrives, so a connection cut in the middle of a commit
    never yields half of it. ``revision`` resumes after that revision;
    ``snapshot=False`` starts with nothing (a lost resume then gives a ``reset``).
    """

    def __init__(self, path: Path = (), revision: int | None = None, snapshot: bool = True):
        self.base = paths.join(path)
        self.revision = revision
        self.snapshot = snapshot
        self.stopped = False
        """Set when the server ended the feed for good (the iteration then ends)."""
        self._parser = EventParser()
        self._out: deque[Change | Ready] = deque()
        self._held: list[Change] = []
        self._pause = 0.0

    def request(self) -> Request:
        """The request that opens the stream, resuming after the last complete revision."""
        return protocol.watch(self.base, self.revision, self.snapshot)

    def opened(self, answer: Answer) -> None:
        """Check the answer to :meth:`request` (its body read unless it is 200).

        A 503 (too many streams) sets the next pause from ``Retry-After`` and
        raises :class:`TransportError` (try again); any other refusal raises
        what :func:`~kvpio_mapping.protocol.check` raises.
        """
        if answer.status_code == 503:
            wait = answer.headers.get("Retry-After", "")
            self._pause = float(wait) if wait.isdigit() else MAX_PAUSE
            raise TransportError("the server has too many streams open")
        protocol.check(answer)

    def receive(self, line: bytes | str) -> None:
        """Take one line of the stream; raises :class:`TransportError` when the server ends
        the stream for a reconnect, :class:`AuthenticationError` when it ends it for good."""
        event = self._parser.feed(line)
        if event is not None:
            self._event(event)

    def ended(self) -> NoReturn:
        """The stream's body ended without an ``end`` event: reconnect."""
        raise TransportError("the stream ended")

    def next(self) -> Change | Ready | None:
        """The next complete change or ready mark, or None until more lines come."""
        return self._out.popleft() if self._out else None

    def lost(self) -> float:
        """The connection is gone: drop the half-read revision; the seconds to pause
        before reconnecting (growing while attempts fail, up to MAX_PAUSE)."""
        self._parser = EventParser()
        self._held = []
        pause = self._pause
        self._pause = min(max(pause * 2, 0.05), MAX_PAUSE)
        return pause

    def _event(self, found: Event) -> None:
        """Take one event; a garbled one raises ``ValueError`` (reconnect, as for a cut).

        An ``end`` leaves the pause as it is: a stream that ended after its
        ``ready`` reconnects at once, one that keeps ending before it backs off.
        """
        kind, data, id_ = found
        body = values.load(data) if data else {}
        if type(body) is not dict:
            raise ValueError(f"the data of a {kind!r} event is not a JSON object")
        if kind == "end":
            reason = body.get("reason")
            if reason in ("account deleted", "key revoked"):
                self.stopped = True
                raise AuthenticationError(f"the change feed ended: {reason}")
            raise TransportError(f"the change feed ended: {reason}")
        if kind == "ready":
            self._pause = 0.0
            self._out.append(Ready(self.revision is not None))
            self.revision = int(id_) if id_ is not None else self.revision
            return
        change = self._change(kind, body)
        if change is not None:
            self._held.append(change)
        if id_ is not None:
            revision = int(id_)
            self.revision = revision
            self._out.extend(held._replace(revision=revision) for held in self._held)
            self._held = []

    def _change(self, kind: str, body: dict[str, Any]) -> Change | None:
        if kind == "snapshot":
            if "data" in body:
                return Change("snapshot", self.base, body["data"], 0)
            if body.get("missing"):
                return Change("delete", self.base, None, 0)
            return Change("reset", self.base, None, 0) if body.get("reset") else None
        if kind == "template":
            name, source = body.get("name"), body.get("source")
            if type(name) is not str or not (source is None or type(source) is str):
                raise ValueError("a template event without a template name or source text")
            return Change("template", name, source, 0)
        if kind not in ("put", "delete"):
            return None  # an event of a later version of the protocol
        relative = body.get("path")
        if type(relative) is not str or (kind == "put" and "data" not in body):
            raise ValueError(f"a {kind} event without its path{' or value' * (kind == 'put')}")
        base = self.base
        full = f"{base}/{relative}" if base and relative else base or relative
        if full:
            paths.parse(full)
        if kind == "put":
            return Change("put", full, body["data"], 0)
        return Change("delete", full, None, 0)
