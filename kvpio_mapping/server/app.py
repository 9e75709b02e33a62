"""The HTTP layer of ``kvpio serve``: routing, auth, limits; the protocol is docs/protocol.md.

Resources are thin: they turn a request into calls on the
:class:`~kvpio_mapping.server.storage.Storage` interface. Paths are parsed
from the raw request path (split on ``/`` first, then percent-decoded), so an
encoded ``%2F`` can never become a separator. Small reads of a local
database run on the event loop; reads that may be large (a whole bucket, a
key listing) run in a read thread, and writes, which may wait on a lock, in
the worker's write threads (one for SQLite's single write lock), so neither
holds up other accounts' requests; only a small group of writes the storage
can commit at once, briefly, commits on the loop (:meth:`Server.commit`). A
storage whose calls wait on the network (:attr:`~.storage.Storage.reads_block`)
has every read run in read threads.
Storage errors of the storage's own (busy, disk full) become 503 and 507.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sqlite3
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager
from importlib import resources
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import quote, unquote_to_bytes

import falcon
import falcon.asgi

from .. import paths, values
from ..errors import InvalidPathError
from ..protocol import ANY_NAME
from . import allocator, collector, jsontext, metrics
from .bodies import BodyCutError, BodyLimits, BodyTimeoutError, Receive, guarded
from .commits import committed_body, conditions, failed_body, parse_commit, path_operation
from .feed import Feed, StreamLimits
from .heads import ALONE
from .health import HealthResource, ReadyResource
from .logs import AccessLog
from .render import (
    RenderBusyError,
    Renderer,
    RenderError,
    RenderLimits,
    SourceTooLargeError,
    referenced_names,
)
from .storage import (
    Storage,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnknownAccountError,
)
from .storage.base import (
    Check,
    CheckFailedError,
    Committed,
    ConflictError,
    Operation,
    TopLevelSets,
    Write,
    hash_key,
)

log = logging.getLogger("kvpio.server")

DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
AUTH_CACHE_SECONDS: Final = 1.0
FLUSH_SECONDS: Final = 0.5
RETRY_AFTER_SECONDS: Final = 1
LARGE_BODY: Final = 2**20
"""Bytes above which a request body counts as large (see :meth:`Server.body`)."""
LARGE_BODIES: Final = 1
LARGE_WAIT: Final = 20.0  # below the clients' 30 s read timeout, so they see the 503
READ_THREADS: Final = 1
GROUP_OPERATIONS: Final = 1000
"""Most operations one group commit holds (see :meth:`Server.commit`); a larger write goes alone."""
LOOP_OPERATIONS: Final = 64
LOOP_BODIES: Final = 64 * 1024
"""Most operations, and bytes of request bodies, of a group committed on the event loop
(see :meth:`Server.commit`); the storage gives up a group still at work after a few ms."""
NETWORK_READ_THREADS: Final = 8
"""Read threads of a worker whose storage's reads wait on the network, small ones included."""

JSON_TYPE: Final = "application/json"
REVISION: Final = "Kvpio-Revision"
COUNT: Final = "Kvpio-Count"
MISSING: Final = "Kvpio-Missing"
NAMES: Final = "Kvpio-Names"
NAMES_LIMIT: Final = 4096
"""Longest ``Kvpio-Names`` listed: a longer one is ``*`` (clients and proxies cap a header
line, ``http.client`` at 64 KiB, nginx's buffer at 4 or 8 KiB for a whole head)."""
TEXT_TYPE: Final = "text/plain; charset=utf-8"
_TRUE: Final = frozenset({"True", "true", "1"})
_FALSE: Final = frozenset({"False", "false", "0"})
_PARSED_PATHS: Final = 4096
_PARSED_PATH_BYTES: Final = 256
_READY_ANSWERS: Final = 1024
"""Answers a bucket resource keeps made (see :meth:`BucketResource.ready`)."""
_READY_TEXT: Final = 1024
"""Longest text, in characters, whose answer is kept (so they take at most a few MiB)."""
_BULK_TEXT: Final = re.compile(rb"[ \t\n\r]*\{")
"""The start of a JSON object (a text that starts so and decodes is one)."""
_CONTAINERS: Final = (dict, list)
_CONTAINERS_SET: Final = frozenset(_CONTAINERS)

T = TypeVar("T")
App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


class ClientError(falcon.HTTPError):
    """An error answer with a JSON ``{"error": message}`` body (see :func:`_serialize_error`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, description=message, headers=headers)


def _segments(raw: bytes) -> paths.Path:
    """Split a raw path remainder on ``/``, then percent-decode each segment as UTF-8."""
    if b"%" not in raw:
        try:
            segments = tuple(raw.decode().split("/"))
        except UnicodeDecodeError:
            raise ClientError(400, "a path segment is not valid UTF-8") from None
        paths.check(segments)
        return segments
    out = []
    for part in raw.split(b"/"):
        if b"%" in part:
            part = unquote_to_bytes(part)
        try:
            out.append(part.decode())
        except UnicodeDecodeError:
            raise ClientError(400, "a path segment is not valid UTF-8") from None
    segments = tuple(out)
    paths.check(segments)
    return segments


def _flag(req: falcon.asgi.Request, name: str) -> bool:
    """A boolean query parameter (``True/False/true/false/1/0``); absent is False."""
    text = req.get_param(name)
    if text is None or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise ClientError(400, f"{name} must be one of True, False, true, false, 1, 0, not {text!r}")


def _tag_matches(header: str, tag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate in ("*", tag) or candidate.removeprefix("W/") == tag:
            return True
    return False


class _Ready(NamedTuple):
    """An answer's body and headers, made once (see :func:`_ready`) and sent by :func:`_answer`."""

    body: bytes | None
    """None for nothing there (``Kvpio-Missing``)."""
    tag: str | None
    headers: list[tuple[str, str]]
    """The headers of a 200 (or of the missing answer)."""
    unchanged: list[tuple[str, str]]
    """The headers of a 304."""


def _ready(
    body: bytes | None, ctype: str, tag: str | None = None, revision: int | None = None
) -> _Ready:
    """The answer of ``body`` (None: missing), with its ETag and, if given, the revision."""
    unchanged = [] if revision is None else [(REVISION, str(revision))]
    if body is None:
        return _Ready(None, None, [*unchanged, (MISSING, "true"), ("Content-Type", ctype)], [])
    if tag is None:
        tag = values.etag(body)
    unchanged.append(("ETag", tag))
    return _Ready(body, tag, [*unchanged, ("Content-Type", ctype)], unchanged)


def _answer(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ready: _Ready, match: str | None
) -> bool:
    """Answer with ``ready``: a 200, or a 304 if ``match`` (the request's ``If-None-Match``)
    names its ETag.

    Returns whether the body is served (a 200 to a GET), which is what counts as a read.
    """
    if match is not None and ready.tag is not None and _tag_matches(match, ready.tag):
        resp.set_headers(ready.unchanged)
        resp.status = 304
        return False
    resp.set_headers(ready.headers)
    resp.data = b"" if ready.body is None else ready.body
    return ready.body is not None and req.method == "GET"


def _send(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    body: bytes,
    ctype: str,
    tag: str | None = None,
) -> bool:
    """Answer 200 with ``body`` and its ETag, or 304 if the client has it already.

    ``tag`` is the body's ETag when it was computed already (off the event loop).
    Returns whether the body is served (a 200 to a GET), which is what counts as a read.
    """
    return _answer(req, resp, _ready(body, ctype, tag), req.get_header("If-None-Match"))


def _missing(resp: falcon.asgi.Response, ctype: str = JSON_TYPE) -> None:
    resp.set_header(MISSING, "true")
    resp.content_type = ctype
    resp.data = b""


def _empty(resp: falcon.asgi.Response) -> None:
    resp.content_type = JSON_TYPE
    resp.data = b""


EVENT_STREAM: Final = "text/event-stream"


def api_key(header: str) -> str | None:
    """The API key a Basic ``Authorization`` header names (its user name), or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")[0]
    except ValueError:  # not base64 (non-ASCII text included), or not UTF-8
        return None
    return user or None


def _revision(resp: falcon.asgi.Response, revision: int) -> None:
    resp.set_header(REVISION, str(revision))


class Server:
    """Per-worker state: storage, its threads, the auth cache, read counts, the renderer."""

    def __init__(
        self, storage: Storage, max_body: int, limits: RenderLimits, streams: StreamLimits
    ) -> None:
        self.storage = storage
        self.max_body = max_body
        self.limits = limits
        self.feed = Feed(storage, streams, self.small)
        self.renderer: Renderer | None = None
        self._writer = ThreadPoolExecutor(
            max_workers=storage.write_threads, thread_name_prefix="kvpio-write"
        )
        self._reader = ThreadPoolExecutor(
            max_workers=NETWORK_READ_THREADS if storage.reads_block else READ_THREADS,
            thread_name_prefix="kvpio-read",
        )
        self._large = asyncio.Semaphore(LARGE_BODIES)
        self._auth: dict[str, tuple[str, str, float]] = {}  # header: account, key digest, until
        self._pending: Counter[str] = Counter()
        self._inflight: list[Counter[str]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._disk_full = False
        self._queued: deque[tuple[Write, int, asyncio.Future[Committed]]] = deque()
        self._committing = 0  # committers running (their tasks, kept from the collector, below)
        self._committers: set[asyncio.Task[None]] = set()
        self.commits = 0
        self.commit_groups = 0
        self.auth_hits = 0
        self.auth_misses = 0

    async def write(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a storage write in the worker's write threads.

        A full disk is logged once when writes start failing for it and once
        when they succeed again, not once per request.
        """
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._writer, lambda: func(*args, **kwargs))
        except StorageFullError:
            self._note_disk(full=True)
            raise
        self._note_disk(full=False)
        return result

    def _note_disk(self, *, full: bool) -> None:
        if full and not self._disk_full:
            log.error("the disk holding the database is full: writes answer 507 until freed")
        elif self._disk_full and not full:
            log.warning("the database accepts writes again")
        self._disk_full = full

    async def commit(self, write: Write, body: int = 0, alone: bool = False) -> Committed:
        """Commit ``write`` (from a body of ``body`` bytes) with the commits waiting beside it.

        Commits queue; a committer's next turn commits all that wait (up to
        :data:`GROUP_OPERATIONS` operations) with
        :meth:`~.storage.Storage.commit_group`: one transaction, one sync. Each
        still returns only after its own commit, with its own outcome. A small
        group is committed on the event loop when the storage can do it at once
        (:meth:`~.storage.Storage.commit_group_now`): handing it to a write
        thread and back costs more than the commit. Else a write thread does it.

        A small write ``alone`` (its request came when the worker had no other
        in progress: :data:`~.heads.ALONE`) and with no commit waiting is
        committed at once, without a committer's turn: no other write is on
        its way to share its commit.
        """
        if type(write.operations) is TopLevelSets and not write.operations.decoded:
            # Stored while it is decoded: alone, as its length is not known until then.
            self.commits += 1
            self.commit_groups += 1
            return await self.write(self.storage.commit, *write)
        if alone and not self._queued and not self._committing:
            outcomes = self._commit_now([write], len(write.operations), body)
            if outcomes is not None:
                if isinstance(outcomes[0], Exception):
                    raise outcomes[0]
                return outcomes[0]
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        self._queued.append((write, body, future))
        if self._committing < self.storage.write_threads:
            self._committing += 1
            committer = asyncio.create_task(self._commit_queued())
            self._committers.add(committer)
            committer.add_done_callback(self._committers.discard)
        return await future

    async def _commit_queued(self) -> None:
        """Commit the queued writes, a group at a time, until none wait."""
        loop = asyncio.get_running_loop()
        try:
            # One turn of the event loop first: the writes of requests read in the same turn
            # as the one that started this committer join its group (groups of 8 rather
            # than 6 from 16 writers, and 7% more writes a second).
            await asyncio.sleep(0)
            while self._queued:
                # The waiting writes, shared among the committers running (several write threads).
                share = -(-len(self._queued) // self._committing)
                group = [self._queued.popleft()]
                size, body = len(group[0][0].operations), group[0][1]
                while (
                    self._queued
                    and len(group) < share
                    and size + len(self._queued[0][0].operations) <= GROUP_OPERATIONS
                ):
                    size += len(self._queued[0][0].operations)
                    body += self._queued[0][1]
                    group.append(self._queued.popleft())
                writes = [write for write, _, _ in group]
                outcomes = self._commit_now(writes, size, body)
                if outcomes is None:
                    self.commits += len(writes)
                    self.commit_groups += 1
                    try:
                        outcomes = await loop.run_in_executor(
                            self._writer, self.storage.commit_group, writes
                        )
                    except Exception as exc:
                        outcomes = [exc] * len(group)
                    self._note_disk(full=any(isinstance(o, StorageFullError) for o in outcomes))
                unreachable = next(
                    (o for o in outcomes if isinstance(o, StorageUnavailableError)), None
                )
                if unreachable is not None:
                    # The writes that queued meanwhile would each wait as long to learn the
                    # same: they are answered now (503, retry soon), not one wait after another.
                    while self._queued:
                        group.append(self._queued.popleft())
                        outcomes.append(unreachable)
                for (_, _, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():  # the request was given up
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            # In the step that found the queue empty, so a write queued later starts another.
            self._committing -= 1

    def _commit_now(
        self, writes: list[Write], size: int, body: int
    ) -> list[Committed | Exception] | None:
        """The outcomes of committing ``writes`` (``size`` operations from ``body`` bytes) on
        the event loop, counted; None if the group is over :data:`LOOP_OPERATIONS` or
        :data:`LOOP_BODIES`, or the storage cannot commit it at once
        (:meth:`~.storage.Storage.commit_group_now`)."""
        if size > LOOP_OPERATIONS or body > LOOP_BODIES:
            return None
        try:
            outcomes = self.storage.commit_group_now(writes)
        except Exception as exc:
            outcomes = [exc] * len(writes)
        if outcomes is not None:
            self.commits += len(writes)
            self.commit_groups += 1
            self._note_disk(full=any(isinstance(o, StorageFullError) for o in outcomes))
        return outcomes

    async def authenticate(self, req: falcon.asgi.Request) -> str:
        """The account id named by the Basic auth user name; 404 for anything else.

        Sets ``req.context.key_digest``. A lookup is kept for
        :data:`AUTH_CACHE_SECONDS`: a commit checks inside its own transaction
        that the account still has the key (:class:`~.storage.base.Write`), the
        other writes look the key up again (:meth:`confirm`), so a deleted
        account's key stops writing at once, and reading within that time. A
        request that finds its account gone drops the entry (:meth:`forget`).
        """
        header = req.get_header("Authorization")
        if header is None:
            raise ClientError(404, "unknown API key")
        now = time.monotonic()
        cached = self._auth.get(header)
        if cached is not None and cached[2] > now:
            self.auth_hits += 1
            req.context.key_digest = cached[1]
            return cached[0]
        self.auth_misses += 1
        user = api_key(header)
        account = await self.small(self.storage.authenticate, user) if user else None
        if account is None or user is None:
            raise ClientError(404, "unknown API key")
        if len(self._auth) > 10_000:
            self._auth.clear()
        digest = hash_key(user)
        self._auth[header] = (account, digest, now + AUTH_CACHE_SECONDS)
        req.context.key_digest = digest
        return account

    async def confirm(self, req: falcon.asgi.Request) -> None:
        """Look the request's key up afresh before a write that is not a commit: 404 unless
        it still opens the account it was found to open."""
        if not await self.still_allowed(req, req.context.account)():
            self.forget(req)
            raise ClientError(404, "unknown API key")

    def forget(self, req: falcon.asgi.Request) -> None:
        """Drop the request's API key from the auth cache: its account is gone."""
        header = req.get_header("Authorization")
        if header is not None:
            self._auth.pop(header, None)

    def still_allowed(
        self, req: falcon.asgi.Request, account: str
    ) -> Callable[[], Awaitable[bool]]:
        """A check that the request's API key still opens ``account`` (for long-lived answers)."""
        user = api_key(req.get_header("Authorization") or "")

        async def check() -> bool:
            return user is not None and await self.small(self.storage.authenticate, user) == account

        return check

    def count_read(self, account: str) -> None:
        self._pending[account] += 1

    def unflushed(self, account: str) -> int:
        """Reads counted here but not yet in storage."""
        return self._pending[account] + sum(batch[account] for batch in self._inflight)

    async def flush(self) -> None:
        """Write the counted reads to storage."""
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        self._inflight.append(batch)
        try:
            await self.write(self.storage.add_reads, batch)
        except StorageError:
            self._pending.update(batch)  # counted again at the next flush
            raise
        finally:
            self._inflight.remove(batch)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except StorageError:
                pass  # kept for the next flush; a full disk is logged by write()
            except Exception:
                log.exception("could not store read counts")

    async def startup(self) -> None:
        self.renderer = Renderer(self.limits)
        self._flusher = asyncio.create_task(self._flush_forever())

    async def shutdown(self) -> None:
        self.feed.close()
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
        if self.renderer is not None:
            self.renderer.close()
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self.storage.close()

    async def read_body(self, req: falcon.asgi.Request) -> bytes:
        """The request body, refusing (413) one over ``max_body`` before or while reading it."""
        length = req.content_length
        if length is not None:
            if length > self.max_body:
                raise ClientError(413, f"body is over the limit of {self.max_body} bytes")
            return await req.stream.read()
        chunks = []
        total = 0
        async for chunk in req.stream:
            total += len(chunk)
            if total > self.max_body:
                raise ClientError(413, f"body is over the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @asynccontextmanager
    async def body(self, req: falcon.asgi.Request) -> AsyncIterator[bytes]:
        """The request body, held while it is handled.

        Decoding and storing a body costs many times its size in memory, so at
        most :data:`LARGE_BODIES` bodies over :data:`LARGE_BODY` bytes are
        handled at once per worker; the next waits up to :data:`LARGE_WAIT`
        seconds, then gets 503. The slot is taken once the body has arrived,
        so a slow sender holds none. While a large body is handled, the
        collector is held off (:mod:`.collector`): its value, hundreds of
        thousands of young objects, would otherwise be scanned again and again
        until stored. The slot and the hold last until the answer is sent
        (:func:`after_response`), so that its value (see :meth:`decode`) is
        freed first.
        """
        data = await self.read_body(req)
        if len(data) <= LARGE_BODY:
            yield data
            return
        try:
            await asyncio.wait_for(self._large.acquire(), LARGE_WAIT)
        except asyncio.TimeoutError:
            raise ClientError(
                503,
                f"the server is busy with other large writes for {LARGE_WAIT:g} s: try again",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        later = after_response(req)
        later.callback(self._large.release)
        later.enter_context(collector.held_off())
        yield data

    async def decode(
        self, body: bytes, wrapper: int = 0, *, req: falcon.asgi.Request | None = None
    ) -> Any:
        """The JSON value of a request body (400 if there is none); large ones off the loop.

        ``wrapper`` is how many levels of the body hold values rather than being one
        (a batch's object or list of pairs): they do not count towards the nesting limit.
        With ``req``, a large value is kept until the answer to ``req`` is sent: freeing
        one takes milliseconds a megabyte, which the answer need not wait for.
        """
        if len(body) <= LARGE_BODY:
            return _decoded(body, wrapper)
        value = await asyncio.to_thread(_decoded, body, wrapper)
        if req is not None:
            after_response(req).callback(list.clear, [value])
        return value

    async def read(self, func: Callable[..., T], *args: Any) -> T:
        """Run a read that may be large (a whole bucket, a listing) in a read thread.

        Small reads stay on the event loop; these would hold it for as long as
        they take to assemble, and with it every other account's requests.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, func, *args)

    async def small(self, func: Callable[..., T], *args: Any) -> T:
        """Run a small read: on the event loop, unless the storage's reads wait on the network."""
        if not self.storage.reads_block:
            return func(*args)
        return await self.read(func, *args)


_AFTER_RESPONSE: Final = "kvpio.after_response"
"""The scope key of a request's :func:`after_response` stack."""


def after_response(req: falcon.asgi.Request) -> ExitStack:
    """What to do once the answer to ``req`` is sent (or its handling failed), last first.

    The app (:class:`_App`) closes the stack when the request's handling ends.
    """
    later: ExitStack | None = req.scope.get(_AFTER_RESPONSE)
    if later is None:
        later = req.scope[_AFTER_RESPONSE] = ExitStack()
    return later


def _decoded(body: bytes, wrapper: int = 0) -> Any:
    """:meth:`Server.decode`, in the calling thread."""
    if not body:
        raise ClientError(400, "a request body with a JSON value is required")
    limit = values.MAX_NESTING + wrapper
    try:
        return jsontext.decode(body, limit)
    except ValueError as exc:
        message = str(exc).replace(f"than {limit} levels", f"than {values.MAX_NESTING} levels")
        raise ClientError(400, f"invalid JSON: {message}") from None


class _Middleware:
    """Lifespan (start and stop the worker's state) and auth before any responder."""

    def __init__(self, server: Server) -> None:
        self.server = server

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self.server.startup()

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self.server.shutdown()

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: Any,
        params: dict[str, Any],
    ) -> None:
        params.clear()
        if resource is not None and resource.prefix is not None:
            req.context.account = await self.server.authenticate(req)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        """Every answer to a known account carries its revision (reads and writes set their
        own), but a 5xx: the storage may be what failed, and asking it again would hold the
        answer back as long again."""
        if resp.get_header(REVISION) is not None:  # looked at first: most answers have it
            return
        account = req.context.get("account")
        if account is not None and resp.status_code < 500:
            _revision(resp, await self.server.small(self.server.storage.revision, account))


class _Resource:
    """Common parts: the server state and the raw path after ``prefix``."""

    prefix: bytes | None = None

    def __init__(self, server: Server) -> None:
        self.server = server
        self.storage = server.storage
        self._parsed: dict[bytes, paths.Path] = {}

    def path(self, req: falcon.asgi.Request) -> paths.Path:
        """The segments after the resource's prefix, ``()`` for the listing URL.

        Keeps the segments of up to :data:`_PARSED_PATHS` raw paths of at most
        :data:`_PARSED_PATH_BYTES` bytes, emptied when full; a path that does
        not parse is not kept, and raises each time.
        """
        raw: bytes = req.scope.get("raw_path") or req.scope["path"].encode()
        found = self._parsed.get(raw)
        if found is not None:
            return found
        segments = self._parse(raw)
        if len(raw) <= _PARSED_PATH_BYTES:
            if len(self._parsed) >= _PARSED_PATHS:
                self._parsed.clear()
            self._parsed[raw] = segments
        return segments

    def _parse(self, raw: bytes) -> paths.Path:
        prefix = self.prefix or b""
        if raw.startswith(prefix) and raw[len(prefix) : len(prefix) + 1] in (b"", b"/"):
            rest = raw[len(prefix) + 1 :]
        else:
            parts = raw.split(b"/", 3)
            if [unquote_to_bytes(part) for part in parts[:3]] != prefix.split(b"/"):
                raise ClientError(400, "the endpoint in the URL must not be percent-encoded")
            rest = parts[3] if len(parts) == 4 else b""
        return _segments(rest) if rest else ()


class AccountResource(_Resource):
    prefix = b"/v1/account"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account_id: str = req.context.account
        server = self.server
        account = await server.write(self.storage.account, account_id)
        if account is None:
            server.forget(req)
            raise ClientError(404, "unknown API key")
        reads = account.reads + server.unflushed(account_id)
        body = {"id": account.id, "email": account.email, "reads": reads, "size": account.size}
        resp.content_type = JSON_TYPE
        resp.data = values.encode(body)

    on_head = on_get


_READ_HEADERS: Final = frozenset({b"accept", b"if-none-match", b"last-event-id"})


def _read_headers(req: falcon.asgi.Request) -> dict[bytes, str]:
    """The headers a bucket read looks at (:data:`_READ_HEADERS`), by lower-case name.

    One pass over the request's headers: ``get_header`` raises and catches a
    ``KeyError`` for each that is absent, which most of them are. A repeated
    header's values are joined with commas, as Falcon joins them.
    """
    found: dict[bytes, str] = {}
    for name, value in req.scope["headers"]:
        if name in _READ_HEADERS:
            text = value.decode("latin1")
            found[name] = found[name] + "," + text if name in found else text
    return found


def _feed_start(req: falcon.asgi.Request, header: str | None) -> tuple[int | None, bool]:
    """Where a change feed starts: the ``Last-Event-ID`` revision (``header``), and whether
    to snapshot first."""
    last_id = None
    if header is not None and header.strip():
        if not (header.strip().isascii() and header.strip().isdigit()):
            raise ClientError(400, "Last-Event-ID must be a revision (a whole number)")
        last_id = int(header)
    snapshot = not req.query_string or req.get_param("snapshot") is None or _flag(req, "snapshot")
    return last_id, snapshot


def _send_large(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, answer: tuple[bytes, str, str]
) -> bool:
    """:func:`_send` of an answer that may be large (a listing, the whole bucket).

    Over :data:`LARGE_BODY` bytes, the memory freed in building and sending it
    goes back to the system once it is sent (:mod:`.allocator`), so the
    worker does not keep it.
    """
    if len(answer[0]) > LARGE_BODY:
        resp.schedule_sync(allocator.give_back)
    return _send(req, resp, *answer)


class BucketResource(_Resource):
    prefix = b"/v1/bucket"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._ready: dict[tuple[str | None, int], _Ready] = {}

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        path = self.path(req)
        # The feed's inputs are checked on every GET, as every flag is, streamed or not.
        headers = _read_headers(req)
        since, snapshot = _feed_start(req, headers.get(b"last-event-id"))
        accept = headers.get(b"accept")
        if accept is not None and EVENT_STREAM in accept and req.method == "GET":
            await self.watch(req, resp, account, path, since, snapshot)
            return
        if req.query_string:
            count = _flag(req, "count")
            keys = _flag(req, "keys")
            whole = not path and _flag(req, "values")  # checked even when count or keys wins
            if count:
                await self.count(req, resp, account, path)
                return
            if keys:
                _send_large(req, resp, await self.server.read(self._keys, account, path))
                return
            if whole:
                if _send_large(req, resp, await self.server.read(self._all, account)):
                    self.server.count_read(account)
                return
        if not path:
            _send_large(req, resp, await self.server.read(self._keys, account, path))
            return
        found = await self.server.small(self.storage.read, account, path)
        if _answer(req, resp, self.ready(found), headers.get(b"if-none-match")):
            self.server.count_read(account)

    on_head = on_get

    async def watch(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        account: str,
        path: paths.Path,
        last_id: int | None,
        snapshot: bool,
    ) -> None:
        """Answer with the change feed of ``path`` (docs/protocol.md, "Live").

        A body the request announces is read first, and ignored: Falcon watches
        for the client's disconnect by reading on, where a late or cut body would
        end the stream with an error rather than with a 408.
        """
        server = self.server
        if req.content_length or req.get_header("Transfer-Encoding") is not None:
            await server.read_body(req)
        resp.set_header("Cache-Control", "no-store")
        resp.sse = await server.feed.open(
            account, path, last_id, snapshot, server.still_allowed(req, account)
        )

    async def count(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, account: str, path: paths.Path
    ) -> None:
        """Answer how many keys or items are at ``path`` (docs/protocol.md, "Counts").

        The storage keeps counts, so this is a small read at any size.
        """
        try:
            found, revision = await self.server.small(self.storage.count, account, path)
        except ConflictError as exc:
            raise ClientError(409, str(exc)) from None
        _revision(resp, revision)
        if found is None:
            _missing(resp)
            return
        resp.set_header(COUNT, str(found))
        _send(req, resp, str(found).encode(), JSON_TYPE)

    def ready(self, found: tuple[str | None, int]) -> _Ready:
        """The answer to a read that found ``found`` (text or None, revision).

        Keeps those of up to :data:`_READY_ANSWERS` small texts (emptied when
        full), so a read the storage answers from its cache, the same tuple each
        time, finds its body, ETag and headers made.
        """
        text, revision = found
        if text is not None and len(text) > _READY_TEXT:
            return _ready(text.encode(), JSON_TYPE, revision=revision)
        ready = self._ready.get(found)
        if ready is None:
            ready = _ready(None if text is None else text.encode(), JSON_TYPE, revision=revision)
            if len(self._ready) >= _READY_ANSWERS:
                self._ready.clear()
            self._ready[found] = ready
        return ready

    def _keys(self, account: str, path: paths.Path) -> tuple[bytes, str, str]:
        """The key listing at ``path``: body, content type, ETag (runs in a read thread)."""
        body = values.encode(self.storage.keys(account, path))
        return body, JSON_TYPE, values.etag(body)

    def _all(self, account: str) -> tuple[bytes, str, str]:
        """The whole bucket: body, content type, ETag (runs in a read thread)."""
        body = self.storage.get_all(account).encode()
        return body, JSON_TYPE, values.etag(body)

    async def commit(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        operations: Sequence[Operation],
        checks: list[Check],
        body: int = 0,
    ) -> Committed | None:
        """Commit (from a body of ``body`` bytes); on a failed check or a conflict, answer it
        and return None.

        A write to one path that fails its check answers 412 with that path's
        value and ETag, as a read would (Firebase's semantics); a commit of
        several answers 412 naming each failed check.
        """
        account: str = req.context.account
        try:
            committed = await self.server.commit(
                Write(account, operations, checks, req.context.key_digest),
                body,
                req.scope.get(ALONE, False),
            )
        except ConflictError as exc:
            raise ClientError(409, str(exc)) from None
        except CheckFailedError as exc:
            resp.status = 412
            _revision(resp, await self.server.small(self.storage.revision, account))
            if self.path(req):
                text = exc.failures[0].text
                if text is None:
                    _missing(resp)
                else:
                    resp.set_header("ETag", values.etag(text.encode()))
                    resp.content_type = JSON_TYPE
                    resp.data = text.encode()
            else:
                resp.content_type = JSON_TYPE
                resp.data = failed_body(exc)
            return None
        self.server.feed.poke(account)
        _revision(resp, committed.revision)
        return committed

    def conditions(self, req: falcon.asgi.Request, path: paths.Path) -> list[Check]:
        """The checks of ``If-Match`` / ``If-None-Match: *`` on a write to ``path``."""
        return conditions(path, req.get_header("If-Match"), req.get_header("If-None-Match"))

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        path = self.path(req)
        if req.query_string:
            _refuse_misplaced(req, path)
        async with self.server.body(req) as body:
            # Each in a coroutine of its own, so its value is gone before the body is let go.
            if path:
                await self._post_value(req, resp, path, body)
            elif req.query_string and _flag(req, "commit"):
                await self._post_commit(req, resp, body)
            else:
                await self._post_batch(req, resp, body)

    async def _post_value(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, path: paths.Path, body: bytes
    ) -> None:
        value = await self.server.decode(body, req=req)
        kind = path_operation(req.get_param("op") if req.query_string else None)
        operation = Operation(kind, path, value)
        committed = await self.commit(req, resp, [operation], self.conditions(req, path), len(body))
        if committed is not None:
            _empty(resp)
            result = committed.results[0]
            if result is not None:
                resp.data = result.encode()

    async def _post_commit(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, body: bytes
    ) -> None:
        commit = parse_commit(await self.server.decode(body, req=req))
        committed = await self.commit(req, resp, *commit, len(body))
        if committed is not None:
            resp.content_type = JSON_TYPE
            resp.data = committed_body(committed)

    async def _post_batch(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, body: bytes
    ) -> None:
        operations: Sequence[Operation]
        if len(body) > LARGE_BODY and _BULK_TEXT.match(body) and b"/" not in body:
            # An object whose keys have no slash: its sets, or a 400 once decoded.
            operations = TopLevelSets.decoded_later(body, lambda: _bulk_sets(body))
        else:
            # A batch wraps its values in an object or a list of pairs: one or two levels.
            value = await self.server.decode(body, wrapper=2, req=req)
            operations = await asyncio.to_thread(_batch, value, body)  # a large one takes a while
        if await self.commit(req, resp, operations, [], len(body)) is not None:
            _empty(resp)

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        path = self.path(req)
        if not path:
            if not _flag(req, "all"):
                raise ClientError(400, "deleting the whole bucket needs ?all=true")
            _unconditional(req, "deleting the whole bucket")
            await self.server.confirm(req)
            _revision(resp, await self.server.write(self.storage.clear, account))
            self.server.feed.poke(account)
            _empty(resp)
            return
        pop = _flag(req, "pop") if req.query_string else False
        operation = Operation("pop" if pop else "delete", path)
        committed = await self.commit(req, resp, [operation], self.conditions(req, path))
        if committed is None:
            return
        removed = committed.results[0]
        if not pop:
            _empty(resp)
        elif removed is None:
            _missing(resp)
        else:
            resp.content_type = JSON_TYPE
            resp.data = removed.encode()


def _unconditional(req: falcon.asgi.Request, what: str) -> None:
    """400 for ``If-Match`` or ``If-None-Match`` on a write that cannot check it: ignored,
    the condition would leave the write unconditional."""
    if req.get_header("If-Match") is not None or req.get_header("If-None-Match") is not None:
        raise ClientError(400, f"{what} takes no If-Match or If-None-Match condition")


def _refuse_misplaced(req: falcon.asgi.Request, path: paths.Path) -> None:
    """400 for a write's query flag that means something only elsewhere, rather than a write
    of another meaning: a commit body stored as a path's value, a batch of increments as sets."""
    if path and _flag(req, "commit"):
        raise ClientError(400, "?commit=true is taken only at /v1/bucket/, not below it")
    if not path and req.get_param("op") is not None:
        raise ClientError(400, "?op= is taken only by a write to a path, not at /v1/bucket/")


def _batch(value: Any, body: bytes) -> Sequence[Operation]:
    """The sets of a batch write: a ``{path: value}`` object or a ``[[path, value], ...]`` list.

    An object whose keys are each one segment (a bulk import, mostly) is
    :class:`~.storage.base.TopLevelSets` of its ``body``: no operation is
    made for each of its keys unless the storage asks.
    """
    pairs: Iterable[Any]
    if type(value) is dict:
        if paths.one_segment_each(value):
            sets = TopLevelSets(value, body)
            if not _CONTAINERS_SET.isdisjoint(sets.kinds):
                for item in value.values():
                    if type(item) in _CONTAINERS:
                        values.check(item)  # the batch was decoded allowing for its own levels
            return sets
        pairs = value.items()
    elif type(value) is list and all(
        type(pair) is list and len(pair) == 2 and type(pair[0]) is str for pair in value
    ):
        pairs = value
    else:
        raise ClientError(
            400,
            "a write to the bucket root needs a JSON object of paths or a list of [path, value]",
        )
    batch = []
    for key, item in pairs:
        if type(item) in _CONTAINERS:
            values.check(item)  # the batch was decoded allowing for its own levels
        batch.append(Operation("set", paths.parse(key), item))
    return batch


def _bulk_sets(body: bytes) -> TopLevelSets:
    """The sets of a large batch object whose keys have no slash (a bulk import).

    Each key is a path of one segment or an invalid one, so :func:`_batch`
    makes the sets or raises.
    """
    sets = _batch(_decoded(body, wrapper=2), body)
    if type(sets) is not TopLevelSets:
        raise AssertionError("a batch of keys without a slash made other operations")
    return sets


class TemplateListResource(_Resource):
    """``/v1/templates/``: the names only, so OPTIONS and 405 offer just GET and HEAD."""

    prefix = b"/v1/templates"

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        listed = await self.server.small(self.storage.list_templates, account)
        _send(req, resp, values.encode(listed), JSON_TYPE)

    on_head = on_get


class TemplatesResource(_Resource):
    prefix = b"/v1/templates"

    def name(self, req: falcon.asgi.Request) -> str:
        return paths.join(self.path(req))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        name = self.name(req)
        raw = _flag(req, "raw") if req.query_string else False
        overrides = await self._overrides(req)
        source = await self.server.small(self.storage.get_template, account, name)
        if source is None:
            _missing(resp, TEXT_TYPE)
            return
        if raw:
            if _send(req, resp, source.encode(), TEXT_TYPE):
                self.server.count_read(account)
            return
        try:
            # Parsing a large hostile source takes a while: keep it off the event loop.
            names = await asyncio.to_thread(referenced_names, source, self.server.limits)
        except RenderError as exc:
            raise ClientError(422, str(exc)) from None
        context = await self.server.small(self._context, account, names)
        context.update(overrides)
        renderer = self.server.renderer
        assert renderer is not None, "the renderer starts with the app"
        try:
            text = await renderer.render(source, context, owner=account)
        except RenderBusyError as exc:
            raise ClientError(503, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except RenderError as exc:
            raise ClientError(422, str(exc)) from None
        listed = ",".join(quote(n, safe="") for n in sorted(names))
        resp.set_header(NAMES, listed if len(listed) <= NAMES_LIMIT else ANY_NAME)
        if _send(req, resp, text.encode(), TEXT_TYPE):
            self.server.count_read(account)

    on_head = on_get

    async def _overrides(self, req: falcon.asgi.Request) -> dict[str, Any]:
        """The GET body's JSON object of top-level names, or ``{}`` without a body."""
        async with self.server.body(req) as body:
            if not body:
                return {}
            data = await self.server.decode(body)
        if type(data) is not dict:
            raise ClientError(400, "the data for a template must be a JSON object")
        return data

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        name = self.name(req)
        _unconditional(req, "a template write")
        async with self.server.body(req) as body:
            source = await self.server.decode(body)
        if type(source) is not str:
            raise ClientError(400, "a template must be a JSON string")
        try:
            await asyncio.to_thread(referenced_names, source, self.server.limits)
        except SourceTooLargeError as exc:
            raise ClientError(413, str(exc)) from None
        except RenderError as exc:
            raise ClientError(422, str(exc)) from None
        await self.server.confirm(req)
        await self.server.write(self.storage.set_template, account, name, source)
        _empty(resp)

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        account: str = req.context.account
        name = self.name(req)
        _unconditional(req, "a template write")
        await self.server.confirm(req)
        if _flag(req, "pop"):
            source = await self.server.write(self._pop, account, name)
            if source is None:
                _missing(resp, TEXT_TYPE)
            else:
                resp.content_type = TEXT_TYPE
                resp.data = source.encode()
            return
        await self.server.write(self.storage.delete_template, account, name)
        _empty(resp)

    def _context(self, account: str, names: frozenset[str]) -> dict[str, Any]:
        """The stored values a template's variables name (storage reads, one call)."""
        context: dict[str, Any] = {}
        for variable in sorted(names):
            try:
                found = self.storage.get(account, paths.parse(variable))
            except InvalidPathError:
                continue
            if found is not None:
                context[variable] = values.load(found)
        return context

    def _pop(self, account: str, name: str) -> str | None:
        """Remove a template, returning its source (runs in the write thread)."""
        source = self.storage.get_template(account, name)
        if source is not None and not self.storage.delete_template(account, name):
            return None
        return source


class OpenAPIResource:
    """The OpenAPI document of the protocol, no auth."""

    prefix = None

    def __init__(self) -> None:
        self.body = resources.files(__package__).joinpath("openapi.json").read_bytes()
        self.tag = values.etag(self.body)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.set_header("ETag", self.tag)
        match = req.get_header("If-None-Match")
        if match is not None and _tag_matches(match, self.tag):
            resp.status = 304
            return
        resp.content_type = JSON_TYPE
        resp.data = self.body

    on_head = on_get


def _handler(status: int, prefix: str = "") -> Callable[..., Awaitable[None]]:
    async def handle(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
    ) -> None:
        raise ClientError(status, prefix + str(exc))

    return handle


async def _busy(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
) -> None:
    metrics.STORAGE_ERRORS.inc()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    raise ClientError(503, f"{exc}: nothing was changed, try again", headers)


async def _full(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
) -> None:
    metrics.STORAGE_ERRORS.inc()
    raise ClientError(507, "the server's disk is full: nothing was stored")


def _unknown_account(server: Server) -> Callable[..., Awaitable[None]]:
    """The handler of an account gone since its key was looked up: 404, and the key forgotten."""

    async def handle(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
    ) -> None:
        server.forget(req)
        raise ClientError(404, "unknown API key")

    return handle


async def _unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    if isinstance(exc, (sqlite3.Error, OSError)):
        metrics.STORAGE_ERRORS.inc()
    log.exception("unexpected error on %s %s", req.method, req.path)
    raise ClientError(500, "internal server error")


async def _unavailable(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
) -> None:
    """The database cannot be reached now (a restart, a failover): the request may succeed later."""
    metrics.STORAGE_ERRORS.inc()
    log.warning("%s %s: %s", req.method, req.path, exc)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    raise ClientError(503, "the database is unavailable; try again", headers)


def _serialize_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: falcon.HTTPError
) -> None:
    """Every error answer's body: ``{"error": message}``.

    A 408 or 413 also closes the connection: the rest of the body may still
    be on its way, and must not be read as the next request.
    """
    resp.content_type = JSON_TYPE
    resp.data = json.dumps({"error": exc.description or exc.title}, ensure_ascii=False).encode()
    if resp.status_code in (408, 413):
        resp.set_header("Connection", "close")


async def _body_cut(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any
) -> None:
    """The client left mid-body: nothing was changed, and no one reads the answer."""
    log.info("%s %s: %s; nothing was changed", req.method, req.path, exc)
    raise ClientError(400, f"{exc}: nothing was changed")


class _Router(falcon.routing.CompiledRouter):
    """Falcon's router; a path under a prefix routed whole (``PREFIX/{path:path}``) found by it.

    Every path longer than such a prefix has that one route (no other route
    lies below it, which :meth:`add_route` makes sure of), and matching the
    ``path`` converter took the compiled router several times what this does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._whole: dict[str, tuple[object, Any, str]] = {}

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        for prefix in self._whole:
            if uri_template.startswith(prefix):
                raise ValueError(f"{uri_template!r} lies below the route {prefix}{{path:path}}")
        super().add_route(uri_template, resource, **kwargs)
        if uri_template.endswith(_WHOLE):
            prefix = uri_template.removesuffix(_WHOLE)
            found = super().find(prefix + "-")
            assert found is not None and found[3] == uri_template, found
            self._whole[prefix] = (found[0], found[1], uri_template)

    def find(
        self, uri: str, req: Any = None
    ) -> tuple[object, Any, dict[str, Any], str | None] | None:
        for prefix, (resource, methods, template) in self._whole.items():
            if len(uri) > len(prefix) and uri.startswith(prefix):
                return resource, methods, {"path": uri[len(prefix) :]}, template
        return super().find(uri, req)


_WHOLE: Final = "{path:path}"
_BODY_HEADERS: Final = (b"content-length", b"transfer-encoding")


def _announced(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The body a request's head announces: None for none (its first event is all there is),
    else its ``Content-Length``, 0 when chunked."""
    announced = None
    for name, value in headers:
        if name in _BODY_HEADERS:
            announced = max(announced or 0, int(value) if name == b"content-length" else 0)
    return announced


class _App(App):
    """Falcon's ASGI app, with every request body guarded (:mod:`.bodies`), and each request's
    :func:`after_response` stack closed when its handling ends."""

    def __init__(self, body_limits: BodyLimits, max_body: int, **options: Any) -> None:
        super().__init__(**options)
        self.body_limits = body_limits
        self.max_body = max_body

    async def __call__(  # type: ignore[override]
        self, scope: dict[str, Any], receive: Receive, send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if type(headers) is not list:  # any iterable of pairs, each read once (as in tests)
                headers = [tuple(pair) for pair in headers]
                scope = {**scope, "headers": headers}
            announced = _announced(headers)
            if announced is not None:
                receive = guarded(receive, self.body_limits, announced > self.max_body)
        try:
            await super().__call__(scope, receive, send)
        finally:
            later: ExitStack | None = scope.get(_AFTER_RESPONSE)
            if later is not None:
                later.close()


def create_app(
    storage: Storage,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    limits: RenderLimits | None = None,
    streams: StreamLimits | None = None,
    bodies: BodyLimits | None = None,
    access_log: bool = True,
) -> App:
    """The ASGI app serving ``storage``; one per worker process.

    ``access_log``: write ``kvpio.access`` lines (when that logger is enabled);
    without it no request pays for looking.
    """
    server = Server(
        storage,
        max_body,
        limits if limits is not None else RenderLimits(),
        streams if streams is not None else StreamLimits(),
    )
    middleware: list[Any] = [metrics.Metrics(server), _Middleware(server)]
    if access_log:
        middleware.insert(0, AccessLog())
    app: App = _App(
        bodies if bodies is not None else BodyLimits(),
        max_body,
        middleware=middleware,
        cors_enable=False,
        router=_Router(),
    )
    app.req_options.strip_url_path_trailing_slash = False
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.default_media_type = JSON_TYPE

    account = AccountResource(server)
    bucket = BucketResource(server)
    templates = TemplatesResource(server)
    app.add_route("/v1/account", account)
    app.add_route("/v1/account/", account)
    app.add_route("/v1/bucket", bucket)
    app.add_route("/v1/bucket/", bucket)
    app.add_route("/v1/bucket/{path:path}", bucket)
    template_list = TemplateListResource(server)
    app.add_route("/v1/templates", template_list)
    app.add_route("/v1/templates/", template_list)
    app.add_route("/v1/templates/{path:path}", templates)
    app.add_route("/openapi.json", OpenAPIResource())
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(server))
    app.add_route("/metrics", metrics.MetricsResource())

    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(StorageBusyError, _busy)
    app.add_error_handler(StorageFullError, _full)
    app.add_error_handler(UnknownAccountError, _unknown_account(server))
    app.add_error_handler(StorageUnavailableError, _unavailable)
    app.add_error_handler(InvalidPathError, _handler(400))
    app.add_error_handler(ValueError, _handler(400))
    app.add_error_handler(RecursionError, _handler(400, "input nests too deeply: "))
    app.add_error_handler(BodyTimeoutError, _handler(408))
    app.add_error_handler(BodyCutError, _body_cut)
    app.set_error_serializer(_serialize_error)
    return app
