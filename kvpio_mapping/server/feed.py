"""The change feed: a bucket path's changes as Server-Sent Events (docs/protocol.md, "Live").

Each worker follows, for every account with open streams, the account's
change log (:meth:`~kvpio_mapping.server.storage.Storage.changes`) by
revision: one poll every :data:`POLL_SECONDS`, sooner when this worker has
just written. A write made by another worker or host is found by the poll,
so the hint only ever saves time. The follower hands each batch to the
account's streams; each stream keeps its own cursor (the last revision it
sent), picks the changes that touch its path, and reads the value again
when a change cannot be shown from the log alone.

Every storage call goes through the worker's :class:`Runner`, so a storage
whose reads wait on the network (PostgreSQL) never holds the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import falcon
from falcon.asgi import SSEvent

from .. import paths, values
from ..paths import MISSING, Path
from .storage import Storage
from .storage.base import Change, UnknownAccountError

log = logging.getLogger("kvpio.server")

T = TypeVar("T")

POLL_SECONDS: Final = 0.02
"""How often a worker reads the change log of an account with open streams."""

AUTH_SECONDS: Final = 1.0
"""How often a stream's API key is checked again (a revoked key ends the stream)."""

BACKLOG: Final = 1000
"""Batches a stream may fall behind before it is ended (its client resumes from the log)."""

FANOUT_SLICE: Final = 8
"""Streams handed a batch before the follower lets other work run (keeps p99 of reads low)."""

RETRY_AFTER: Final = 5
"""Seconds a client refused for too many streams is asked to wait."""

closing = threading.Event()
"""Set when the worker starts shutting down: every stream ends, saying so."""


@dataclass(frozen=True)
class StreamLimits:
    """How many streams a worker keeps open, in all and per account, and how often it pings."""

    per_worker: int = 500
    per_account: int = 100
    keepalive: float = 5.0


class Runner(Protocol):
    """Runs a storage read: on the event loop, or in a thread when reads wait on the network."""

    def __call__(self, func: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


Relation = Literal["below", "above", "unrelated", "reread"]


def relation(watched: Path, changed: Path, *, deleted: bool) -> Relation:
    """How a change at ``changed`` bears on the value at ``watched``.

    ``below``: at or below it; ``above``: it replaced an ancestor;
    ``reread``: it may have changed it in a way the log cannot show (a list
    item removed before it moves it up; ``1`` and ``01`` name one item).
    """
    for depth, (mine, theirs) in enumerate(zip(watched, changed, strict=False)):
        if mine == theirs:
            continue
        if not (_position(mine) and _position(theirs)):
            return "unrelated"
        if int(mine) == int(theirs) or (deleted and depth == len(changed) - 1):
            return "reread"
        return "unrelated"
    return "below" if len(changed) >= len(watched) else "above"


def _position(segment: str) -> bool:
    return segment.isascii() and segment.isdigit()


def _put(relative: Path, text: str) -> tuple[str, str]:
    return "put", f'{{"path":{json.dumps(paths.join(relative))},"data":{text}}}'


def _delete(relative: Path) -> tuple[str, str]:
    return "delete", f'{{"path":{json.dumps(paths.join(relative))}}}'


REREAD: Final = ("reread", "")


def event_for(watched: Path, change: Change) -> tuple[str, str] | None:
    """The ``(event, data)`` a watcher of ``watched`` gets for ``change``.

    None when the change does not touch it; :data:`REREAD` when only a
    fresh read of the watched value can say what it is now.
    """
    if change.kind == "template":
        if watched:
            return None
        source = "" if change.text is None else f',"source":{json.dumps(change.text)}'
        return "template", f'{{"name":{json.dumps(change.path[0])}{source}}}'
    bearing = relation(watched, change.path, deleted=change.kind == "delete")
    if bearing == "unrelated":
        return None
    if bearing == "reread" or change.kind == "reread":
        return REREAD
    if bearing == "below":
        relative = change.path[len(watched) :]
        return _delete(relative) if change.text is None else _put(relative, change.text)
    if change.text is None:
        return _delete(())
    found = paths.get_in(values.decode(change.text), watched[len(change.path) :])
    return _delete(()) if found is MISSING else _put((), values.dump(found))


class _Stream:
    """One open stream: its queue of batches from the follower, and its API key's check."""

    def __init__(self, account: str, still_allowed: Callable[[], Awaitable[bool]]) -> None:
        self.account = account
        self.still_allowed = still_allowed
        self.queue: asyncio.Queue[_Batch | str] = asyncio.Queue(BACKLOG)
        self.behind = False
        self.checked = self.active = time.monotonic()

    def offer(self, item: _Batch | str) -> None:
        """Queue a batch, a ``ping`` or the reason to end; a stream too far behind is ended."""
        self.active = time.monotonic()
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.behind = True


class _Follower:
    """One account's change log, polled by revision for the streams of this worker."""

    def __init__(self, feed: Feed, account: str, since: int) -> None:
        self.feed = feed
        self.account = account
        self.since = since
        self.streams: set[_Stream] = set()
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        """Follow until no stream is left; a failure ends the streams (their clients resume)."""
        try:
            await self.follow()
        except Exception:
            log.exception("the change feed of %s failed", self.account)
            self.end_all("server error")

    async def follow(self) -> None:
        storage, run = self.feed.storage, self.feed.run
        while self.streams:
            ending = self.ending()
            if ending is not None:
                self.end_all(ending)
                return
            try:
                answer = await run(storage.changes, self.account, self.since)
            except UnknownAccountError:
                self.end_all("account deleted")
                return
            except Exception:
                log.exception("cannot read the change log of %s", self.account)
                answer = None
            if answer is not None and answer.revision != self.since:
                batch = _Batch(answer.changes) if answer.complete else "gap"
                self.since = answer.revision
                for index, stream in enumerate(list(self.streams), 1):
                    stream.offer(batch)
                    if index % FANOUT_SLICE == 0:
                        # Let other requests in between slices of a large fan-out.
                        await asyncio.sleep(0)
                if answer.complete and answer.revision < await run(storage.revision, self.account):
                    continue
            await self.tend()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            self.wake.clear()

    def ending(self) -> str | None:
        return "server closing" if closing.is_set() or self.feed.closed else None

    async def tend(self) -> None:
        """Ping the streams idle for a keep-alive period; check the API keys once a second.

        The pings come from here, not from a timed wait in each stream: no
        timer per stream and per event, which counts with many streams.
        """
        now = time.monotonic()
        keepalive = self.feed.limits.keepalive
        for stream in list(self.streams):
            if now - stream.active >= keepalive:
                stream.offer("ping")
            if now - stream.checked >= AUTH_SECONDS:
                stream.checked = now
                if not await stream.still_allowed():
                    stream.offer("key revoked")

    def end_all(self, reason: str) -> None:
        for stream in list(self.streams):
            stream.offer(reason)


class Feed:
    """The streams of one worker, bounded in all and per account."""

    def __init__(self, storage: Storage, limits: StreamLimits, run: Runner) -> None:
        self.storage = storage
        self.limits = limits
        self.run = run
        self.closed = False
        self._followers: dict[str, _Follower] = {}
        self._open = 0

    def poke(self, account: str) -> None:
        """This worker just wrote to ``account``: poll its log now rather than at the next tick."""
        follower = self._followers.get(account)
        if follower is not None:
            follower.wake.set()

    def close(self) -> None:
        """End every stream (the worker is stopping)."""
        self.closed = True
        for follower in self._followers.values():
            follower.wake.set()

    async def open(
        self,
        account: str,
        path: Path,
        last_id: int | None,
        snapshot: bool,
        still_allowed: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[SSEvent | None]:
        """The events of a new stream of ``path``; 503 when this worker has too many."""
        follower = self._followers.get(account)
        since = None
        if follower is None or follower.task.done():
            since = await self.run(self.storage.revision, account)
            follower = self._followers.get(account)  # another stream may have started one
        limits = self.limits
        if self._open >= limits.per_worker or (
            follower is not None and len(follower.streams) >= limits.per_account
        ):
            raise falcon.HTTPServiceUnavailable(
                description="too many open streams; retry later", retry_after=RETRY_AFTER
            )
        if follower is None or follower.task.done():
            assert since is not None
            follower = _Follower(self, account, since)
            self._followers[account] = follower
        stream = _Stream(account, still_allowed)
        follower.streams.add(stream)
        self._open += 1
        return self._events(follower, stream, path, last_id, snapshot)

    async def _events(
        self,
        follower: _Follower,
        stream: _Stream,
        path: Path,
        last_id: int | None,
        snapshot: bool,
    ) -> AsyncIterator[SSEvent | None]:
        try:
            async for event in _Emitter(self, stream, path, snapshot).run(last_id):
                yield event
        finally:
            self._open -= 1
            follower.streams.discard(stream)
            if not follower.streams and self._followers.get(stream.account) is follower:
                del self._followers[stream.account]
                follower.wake.set()


class _Emitter:
    """Turns one stream's batches into events, keeping its cursor (the revision last sent)."""

    def __init__(self, feed: Feed, stream: _Stream, path: Path, snapshot: bool) -> None:
        self.storage = feed.storage
        self.run_read = feed.run
        self.stream = stream
        self.path = path
        self.snapshot = snapshot
        self.cursor = 0

    async def run(self, last_id: int | None) -> AsyncIterator[SSEvent | None]:
        account = self.stream.account
        if last_id is None:
            if self.snapshot:
                for event in await self.fresh(reset=False):
                    yield event
            else:
                self.cursor = await self.run_read(self.storage.revision, account)
        else:
            self.cursor = last_id
            while True:
                answer = await self.run_read(self.storage.changes, account, self.cursor)
                if not answer.complete:
                    for event in await self.fresh(reset=True):
                        yield event
                    break
                if answer.revision == self.cursor:
                    break
                block = await self.changes(answer.changes, answer.revision)
                if block:
                    yield _Block(block)
        yield SSEvent(event="ready", text="{}", event_id=str(self.cursor))
        stream = self.stream
        while True:
            item = await stream.queue.get()
            if item == "ping":
                yield SSEvent(comment="keep-alive", event_id=str(self.cursor))
                continue
            if stream.behind:
                item = "too far behind"
            if item == "gap":
                for event in await self.fresh(reset=True):
                    yield event
            elif isinstance(item, str):
                yield SSEvent(
                    event="end", text=json.dumps({"reason": item}), event_id=str(self.cursor)
                )
                return
            else:
                block = await self.shared(item)
                if block:
                    yield _Block(block)

    async def fresh(self, *, reset: bool) -> list[SSEvent]:
        """A snapshot of the watched value (or only its revision, when no value is wanted)."""
        text, revision = await self.run_read(self.storage.read, self.stream.account, self.path)
        self.cursor = revision
        parts = []
        if self.snapshot:
            parts.append('"missing":true' if text is None else f'"data":{text}')
        if reset:
            parts.append('"reset":true')
        return [SSEvent(event="snapshot", text="{" + ",".join(parts) + "}", event_id=str(revision))]

    async def changes(self, batch: list[Change], reached: int | None) -> bytes:
        """The events of a batch after the cursor, as one block; ``id`` goes on each
        revision's last event, so a resume never splits a commit."""
        shown: list[tuple[str, str]] = []
        out: list[str] = []
        for index, change in enumerate(batch):
            if change.revision <= self.cursor:
                continue
            found = event_for(self.path, change)
            if found is REREAD:
                text, revision = await self.run_read(
                    self.storage.read, self.stream.account, self.path
                )
                shown = []
                event, data = _delete(()) if text is None else _put((), text)
                out.append(f"event: {event}\nid: {revision}\ndata: {data}\n\n")
                self.cursor = revision
                continue
            if found is not None:
                shown.append(found)
            if index + 1 == len(batch) or batch[index + 1].revision != change.revision:
                for position, (event, data) in enumerate(shown, 1):
                    tag = f"id: {change.revision}\n" if position == len(shown) else ""
                    out.append(f"event: {event}\n{tag}data: {data}\n\n")
                shown = []
                self.cursor = change.revision
        if reached is not None and reached > self.cursor:
            self.cursor = reached
        return "".join(out).encode()

    async def shared(self, batch: _Batch) -> bytes:
        """:meth:`changes` of a follower's batch, computed once for the streams alike."""
        key = (self.path, self.cursor)
        found = batch.shown.get(key)
        if found is None:
            block = await self.changes(batch.changes, None)
            batch.shown[key] = (block, self.cursor)
            return block
        block, self.cursor = found
        return block


class _Batch:
    """Changes a follower read, with the blocks made of them per (path, cursor)."""

    __slots__ = ("changes", "shown")

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        self.shown: dict[tuple[Path, int], tuple[bytes, int]] = {}


class _Block(SSEvent):
    """Events already serialized, sent in one write."""

    __slots__ = ("block",)

    def __init__(self, block: bytes) -> None:
        super().__init__()
        self.block = block

    def serialize(self, handler: object = None) -> bytes:
        return self.block
