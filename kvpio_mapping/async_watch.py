"""Following a bucket path's changes in asyncio code: :class:`AsyncWatch`.

The asyncio counterpart of :class:`~kvpio_mapping.watch.Watch`: it opens the
change feed with :class:`~kvpio_mapping.async_transport.AsyncTransport`,
reads it line by line and yields what :class:`~kvpio_mapping.changes.Follow`
(the same rules: resume, snapshots, pauses, ending events) makes of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx

from .async_transport import AsyncTransport
from .changes import FATAL, READ_TIMEOUT, Change, Follow
from .errors import TransportError
from .paths import Path

_CLOSED: Final = "kvpio watch closed"
"""The message of the cancellation :meth:`AsyncWatch.aclose` sends a task blocked on it."""


class AsyncWatch(AsyncIterator[Change]):
    """The changes at or below one bucket path: ``async for change in bucket.watch(path)``.

    Options as for :class:`~kvpio_mapping.watch.Watch`. Stop it with
    ``await watch.aclose()`` (or ``async with``), from any task of its event
    loop: a blocked ``async for`` then ends. Raises
    :class:`~kvpio_mapping.errors.AuthenticationError` when the account is
    deleted or the key revoked.
    """

    def __init__(
        self,
        transport: AsyncTransport,
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
        self._closed = False
        self._waiting: asyncio.Task[object] | None = None
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    @property
    def revision(self) -> int | None:
        """The last revision whose changes were all read (None before the first)."""
        return self._follow.revision

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Change:
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
            if self._closed or follow.stopped:
                await self._drop()
                raise StopAsyncIteration
            task = asyncio.current_task()
            self._waiting = task
            try:
                await self._step()
            except asyncio.CancelledError:
                # Closed by aclose() (which cancels a task blocked here): end the iteration,
                # unless someone else cancelled the task too.
                if not self._closed or _uncancel(task) > 0:
                    raise
            finally:
                self._waiting = None

    async def aclose(self) -> None:
        """Stop watching: the iteration ends, also one blocked in another task."""
        self._closed = True
        waiting = self._waiting
        if waiting is not None and waiting is not asyncio.current_task():
            waiting.cancel(_CLOSED)
        else:
            await self._drop()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _step(self) -> None:
        """Read one line into the rules, or lose the connection and pause before the next."""
        follow = self._follow
        try:
            lines = self._lines or await self._connect()
            line = await anext(lines, None)
            if line is None:
                follow.ended()
            follow.receive(line)
        except FATAL:
            await self._drop()
            raise
        except (TransportError, ValueError, httpx.HTTPError, OSError):
            await self._drop()
            pause = follow.lost()
            if self._on_down is not None:
                self._on_down()
            await asyncio.sleep(pause)

    async def _connect(self) -> AsyncIterator[str]:
        response = await self._transport.stream(self._follow.request(), READ_TIMEOUT)
        self._response = response
        if response.status_code != 200:
            await response.aread()
        self._follow.opened(response)
        self._lines = response.aiter_lines()
        return self._lines

    async def _drop(self) -> None:
        """Close the current stream, if any."""
        response, self._response = self._response, None
        self._lines = None
        if response is not None:
            await response.aclose()


def _uncancel(task: asyncio.Task[object] | None) -> int:
    """Take back one cancellation request of ``task`` (Python 3.11+ counts them); how many
    are left (0 where they are not counted)."""
    uncancel = getattr(task, "uncancel", None)
    return int(uncancel()) if uncancel is not None else 0
