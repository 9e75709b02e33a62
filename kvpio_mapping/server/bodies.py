"""Request bodies arrive whole and in time, or the request fails before it changes anything.

Falcon reads a body through ASGI ``receive``, and takes a client's disconnect
as the body's end: a client gone part-way through ``123`` would have ``12``
stored. A client may also trickle its body a byte at a time and hold its
connection and its request for as long as it likes. :func:`guarded` wraps
``receive`` for every request so that neither can happen: a disconnect before
the body's last byte raises :class:`BodyCutError`, and a body that has not
arrived within :attr:`BodyLimits.timeout` seconds, plus one second per
:attr:`BodyLimits.min_rate` bytes received (Apache's ``mod_reqtimeout`` rule:
a slow link gets more time, a trickle does not), raises
:class:`BodyTimeoutError`, answered 408 with the connection closed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

Receive = Callable[[], Awaitable[Any]]
"""ASGI ``receive``: the next event of the request (a dict)."""

BODY_TIMEOUT: Final = 20.0
MIN_RATE: Final = 500


@dataclass(frozen=True)
class BodyLimits:
    """A request body may take ``timeout`` seconds, plus a second per ``min_rate`` bytes."""

    timeout: float = BODY_TIMEOUT
    min_rate: int = MIN_RATE


class BodyCutError(Exception):
    """The client went away before the whole body arrived: the request must change nothing."""


class BodyTimeoutError(Exception):
    """The body did not arrive in time (408)."""

    def __init__(self, limits: BodyLimits) -> None:
        super().__init__(
            f"the request body did not arrive within {limits.timeout:g} s"
            f" (plus 1 s per {limits.min_rate} bytes received)"
        )


if sys.version_info >= (3, 11):

    async def _by(deadline: float, receive: Receive) -> Any:
        """The next event, or ``TimeoutError`` at loop time ``deadline`` (no task of its own)."""
        async with asyncio.timeout_at(deadline):
            return await receive()

else:

    async def _by(deadline: float, receive: Receive) -> Any:
        """The next event, or ``TimeoutError`` at loop time ``deadline``."""
        return await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())


def _at_hand(receive: Receive) -> bool:
    """Whether ``receive`` is uvicorn's and its next event has come: it then returns without
    waiting, and needs no timer (a small body has mostly come whole with its head)."""
    cycle = getattr(receive, "__self__", None)
    return type(cycle) is RequestResponseCycle and cycle.message_event.is_set()


def guarded(receive: Receive, limits: BodyLimits, refused: bool = False) -> Receive:
    """``receive`` for one request, raising instead of handing on a late or cut body.

    Falcon awaits the first event before any error handler can answer, so
    that one never raises: a disconnect is handed on (Falcon then drops the
    request), and a first event too late is handed on as an empty piece,
    the error raised at the next call, when a resource reads the body.
    ``refused``: the body is over the size limit and will not be read, so
    that empty piece comes at once, without asking the client for the body
    (uvicorn answers ``Expect: 100-continue`` at the first ``receive``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout
    complete = False
    first = True

    async def guarded_receive() -> Any:
        nonlocal deadline, complete, first
        if first and refused:
            first = False
            return {"type": "http.request", "body": b"", "more_body": True}
        if complete:  # after the body, only a disconnect can come: wait as long as it takes
            return await receive()
        if loop.time() >= deadline:
            raise BodyTimeoutError(limits)
        was_first, first = first, False
        if _at_hand(receive):
            event = await receive()
        else:
            try:
                event = await _by(deadline, receive)
            except asyncio.TimeoutError:
                if was_first:  # an empty piece of a body still to come
                    return {"type": "http.request", "body": b"", "more_body": True}
                raise BodyTimeoutError(limits) from None
        if event["type"] == "http.disconnect":
            if was_first:
                return event
            raise BodyCutError("the client closed the connection before its body ended")
        deadline += len(event.get("body", b"")) / limits.min_rate
        complete = not event.get("more_body", False)
        return event

    return guarded_receive
