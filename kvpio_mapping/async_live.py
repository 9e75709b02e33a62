"""The live cache of ``AsyncKVBucket``: the change feed followed by a task of its event loop.

What the changes do to the cache is :class:`~kvpio_mapping.live.Coherence`,
as for ``KVBucket``; only the runner differs: an asyncio task instead of a
thread. The task starts with the bucket when it is made inside a running
event loop, else with its first read that reaches the server; a forked
child, or another event loop, starts its own the same way.
"""

from __future__ import annotations

import asyncio
import os

from .async_transport import AsyncTransport
from .async_watch import AsyncWatch
from .errors import KvpioError
from .forks import reset_after_fork
from .live import Coherence, log


class AsyncLiveFeed:
    """Follows the bucket of ``transport`` in a task, applying its changes."""

    def __init__(self, transport: AsyncTransport, coherence: Coherence) -> None:
        self._transport = transport
        self._coherence = coherence
        self._closed = False
        self._pid = 0
        self._task: asyncio.Task[None] | None = None
        reset_after_fork(self)
        self.ensure()

    def ensure(self) -> None:
        """Start the feed's task in the running event loop unless it runs there already."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop yet: the first read that reaches the server starts it
        task = self._task
        if task is not None and self._pid == os.getpid() and task.get_loop() is loop:
            return
        self._pid = os.getpid()
        coherence = self._coherence
        watch = AsyncWatch(
            self._transport, snapshot=False, on_ready=coherence.ready, on_down=coherence.down
        )
        self._task = loop.create_task(self._run(watch), name="kvpio-live")

    def close(self) -> None:
        """Stop following (the task ends when the loop next runs it); the TTL rule holds."""
        self._closed = True
        self._coherence.down()
        if self._task is not None and self._pid == os.getpid():
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop following and wait for the task to have closed its stream."""
        self.close()
        task = self._task
        mine = task is not None and self._pid == os.getpid()
        if task is not None and mine and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([task])

    def _after_fork(self) -> None:
        self._task = None

    async def _run(self, watch: AsyncWatch) -> None:
        try:
            async for change in watch:
                self._coherence.apply(change)
        except KvpioError as exc:
            log.warning("the live cache follows no more changes: %s", exc)
        finally:
            self._coherence.down()
            await watch.aclose()
