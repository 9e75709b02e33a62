"""One contract for both clients: ``KVBucket`` and ``AsyncKVBucket`` against real servers.

Each test runs once per client through :class:`Sync` or :class:`Async`, which
give both the same plain-call methods (the async bucket's coroutines run on
the test's own event loop): the same answers as a ``dict``, the same round
trips, the same cache coherence, the same exceptions, and the same change
feed (watches, resumes, the live cache). A watch is read by a thread or by a
task of that loop; the loop runs while the test waits.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faults import fault_server
from feeds import Collector, until, writers

from kvpio_mapping import (
    AsyncKVBucket,
    AuthenticationError,
    ConflictError,
    InvalidPathError,
    KVBucket,
    KvpioTimeoutError,
    ProtocolError,
    ServerError,
    TransportError,
)
from kvpio_mapping.async_watch import AsyncWatch
from kvpio_mapping.changes import Change
from kvpio_mapping.paths import MISSING, delete_in, get_in, parse, set_in
from kvpio_mapping.testing import RunningServer, new_account, start_server


class Sync:
    """A ``KVBucket`` spelled with the async client's method names."""

    def __init__(self, bucket: KVBucket) -> None:
        self.bucket = bucket

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bucket, name)

    def set(self, key: str, value: Any) -> None:
        self.bucket[key] = value

    def delete(self, key: str) -> None:
        del self.bucket[key]

    def contains(self, key: object) -> bool:
        return key in self.bucket

    def keys(self) -> list[str]:
        return [key for key in self.bucket]  # list(bucket) would call len(bucket) first

    def items(self) -> list[tuple[str, Any]]:
        return list(self.bucket.items())

    def size(self) -> int:
        return len(self.bucket)

    def view(self, path: str) -> Sync:
        return Sync(self.bucket.view(path))

    def transact_add(self, key: str, by: int, meddle: Callable[[], None]) -> int:
        def add(tx: Any) -> int:
            found = tx.get(key, 0)
            meddle()
            tx[key] = found + by
            return int(found)

        return int(self.bucket.transact(add))

    def send(self) -> Any:
        return self.bucket.state.transport.send

    def follow(self, path: str = "", **options: Any) -> Collector:
        return Collector(self.bucket.watch(path, **options))

    def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        return until(condition, timeout)

    def wrap_send(self, sent: list[Any]) -> None:
        transport = self.bucket.state.transport
        original = transport.send

        def send(request: Any) -> Any:
            sent.append(request)
            return original(request)

        transport.send = send


class Async:
    """An ``AsyncKVBucket`` whose coroutines run to completion on ``loop`` when called."""

    def __init__(self, bucket: AsyncKVBucket, loop: asyncio.AbstractEventLoop) -> None:
        self.bucket = bucket
        self.loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.bucket, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self.loop.run_until_complete(attribute(*args, **kwargs))

    def view(self, path: str) -> Async:
        return Async(self.bucket.view(path), self.loop)

    def follow(self, path: str = "", **options: Any) -> AsyncCollector:
        return AsyncCollector(self.bucket.watch(path, **options), self.loop)

    def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``condition`` with the event loop running in between (its tasks run then)."""

        def check() -> bool:
            self.loop.run_until_complete(asyncio.sleep(0.005))
            return condition()

        return until(check, timeout)

    def transact_add(self, key: str, by: int, meddle: Callable[[], None]) -> int:
        async def add(tx: Any) -> int:
            found = await tx.get(key, 0)
            meddle()
            tx[key] = found + by
            return int(found)

        return int(self.loop.run_until_complete(self.bucket.transact(add)))

    def wrap_send(self, sent: list[Any]) -> None:
        transport = self.bucket.state.transport
        original = transport.send

        async def send(request: Any) -> Any:
            sent.append(request)
            return await original(request)

        transport.send = send


class AsyncCollector:
    """Iterates an async watch in a task of ``loop``, collecting its changes; the loop runs
    while the test waits for them."""

    def __init__(self, watch: AsyncWatch, loop: asyncio.AbstractEventLoop) -> None:
        self.watch = watch
        self.loop = loop
        self.changes: list[Change] = []
        self.error: BaseException | None = None
        self.task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for change in self.watch:
                self.changes.append(change)
        except Exception as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Change]:
        async def wait() -> None:
            deadline = time.monotonic() + timeout
            while len(self.changes) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(wait())
        assert len(self.changes) >= count, self.changes[-5:]
        return self.changes[:count]

    def stop(self) -> None:
        """Close the watch from another task than the one iterating it."""
        self.loop.run_until_complete(self.watch.aclose())
        self.loop.run_until_complete(asyncio.wait_for(self.task, 5))


Client = Any
Make = Callable[..., Client]


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest, kvpio_account: Any) -> Iterator[Make]:
    """Make a client of the parametrized kind (on the fresh account unless told)."""
    loop = asyncio.new_event_loop()
    made: list[Any] = []

    def make(url: str | None = None, api_key: str | None = None, **options: Any) -> Client:
        url = url or kvpio_account.url
        api_key = api_key or kvpio_account.api_key
        if request.param == "sync":
            client: Any = Sync(KVBucket(url, api_key, **options))
        else:
            client = Async(loop.run_until_complete(_made(url, api_key, options)), loop)
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, Async):
            loop.run_until_complete(client.bucket.aclose())
        else:
            client.bucket.close()
    loop.close()


async def _made(url: str, api_key: str, options: dict[str, Any]) -> AsyncKVBucket:
    return AsyncKVBucket(url, api_key, **options)


@pytest.fixture
def client(make: Make) -> Client:
    return make()


@pytest.fixture
def other(kvpio_account: Any) -> KVBucket:
    """Another client of the same account (a blocking one, uncached)."""
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


def counted(client: Client) -> list[Any]:
    sent: list[Any] = []
    client.wrap_send(sent)
    return sent


# the dict model


KEYS = ["a", "b", "c", "d/x", "d/y", "e/1", "e/2"]
VALUES: list[Any] = [0, 1.5, "text", None, True, [1, 2], {"x": 1}, {"x": {"y": [3]}}, []]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_answer_as_a_dict_does(make: Make, seed: int) -> None:
    rng = random.Random(seed)
    client = make()
    model: dict[str, Any] = {}
    for _step in range(120):
        key = rng.choice(KEYS)
        segments = parse(key)
        action = rng.choice(["set", "get", "contains", "pop", "update", "copy"])
        if action == "set":
            value = rng.choice(VALUES)
            client.set(key, value)
            set_in(model, segments, value)
        elif action == "get":
            expected = get_in(model, segments)
            assert client.get(key, "absent") == ("absent" if expected is MISSING else expected)
        elif action == "contains":
            assert client.contains(key) == (get_in(model, segments) is not MISSING)
        elif action == "pop":
            expected = get_in(model, segments)
            assert client.pop(key, "absent") == ("absent" if expected is MISSING else expected)
            delete_in(model, segments)
        elif action == "update":
            batch = {k: rng.choice(VALUES) for k in rng.sample(["a", "b", "c"], 2)}
            client.update(batch)
            model.update(batch)
        else:
            assert client.copy() == model
            assert sorted(client.keys()) == sorted(model)
            assert client.size() == len(model)
    assert dict(client.items()) == model


def test_delete_and_pop_of_a_missing_key_raise_key_error(client: Client) -> None:
    with pytest.raises(KeyError):
        client.delete("nothing")
    with pytest.raises(KeyError):
        client.pop("nothing")
    assert client.pop("nothing", 7) == 7


def test_a_view_reads_and_writes_below_its_path(client: Client) -> None:
    client.set("cfg", {"x": 1})
    view = client.view("cfg")
    view.set("y", 2)
    assert view.copy() == {"x": 1, "y": 2}
    assert client.get("cfg") == {"x": 1, "y": 2}
    view.clear()
    assert client.get("cfg") == {}


def test_setdefault_and_popitem_act_as_a_dicts(client: Client) -> None:
    assert client.setdefault("k", [1]) == [1]
    assert client.setdefault("k", [2]) == [1]
    client.set("z", 3)
    assert client.popitem() == ("z", 3)


def test_reads_are_the_callers_own_copies(client: Client) -> None:
    client.set("doc", {"list": [1]})
    first = client.get("doc")
    first["list"].append(2)
    assert client.get("doc") == {"list": [1]}


# safe sharing


def test_atomic_operations_answer_the_new_state(client: Client) -> None:
    assert client.increment("n") == 1
    assert client.increment("n", 2.5) == 3.5
    assert client.append("log", "a") == 1
    assert client.append("log", "b") == 2
    client.merge("obj", {"p": 1})
    client.merge("obj", {"q": 2})
    assert client.copy() == {"n": 3.5, "log": ["a", "b"], "obj": {"p": 1, "q": 2}}


def test_conditional_writes_apply_only_to_the_version_read(client: Client, other: KVBucket) -> None:
    assert client.set_if("k", 1, None)
    assert not client.set_if("k", 2, None)
    seen = client.versioned("k")
    other["k"] = 5
    assert not client.set_if("k", 6, seen.etag)
    assert client.versioned("k").value == 5
    assert client.delete_if("k", client.versioned("k").etag)
    with pytest.raises(KeyError):
        client.versioned("k")


def test_a_transaction_runs_again_after_a_conflicting_write(
    client: Client, other: KVBucket
) -> None:
    client.set("n", 1)
    meddled: list[int] = []

    def meddle() -> None:
        if not meddled:
            meddled.append(1)
            other["n"] = 10

    assert client.transact_add("n", 5, meddle) == 10
    assert other["n"] == 15


# round trips


def test_a_miss_is_one_request_and_a_hit_none(make: Make) -> None:
    client = make()
    client.set("k", {"a": [1, 2]})
    sent = counted(client)
    client.get("k")
    client.get("k")
    client.get("k/a/2")
    assert client.contains("k/a")
    client.get("missing")
    client.get("missing")
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("operation", "requests"),
    [
        (lambda c: c.update({f"k{i}": i for i in range(50)}), 1),
        (lambda c: c.copy(), 1),
        (lambda c: c.items(), 1),
        (lambda c: c.keys(), 1),
        (lambda c: c.size(), 1),
        (lambda c: c.clear(), 1),
        (lambda c: c.pop("k1"), 1),
        (lambda c: c.increment("n"), 1),
        (lambda c: c.get("bad//key"), 0),
        (lambda c: c.view("k1").copy(), 1),
    ],
)
def test_whole_bucket_and_batch_operations_are_one_request(
    make: Make, operation: Callable[[Client], Any], requests: int
) -> None:
    client = make(ttl=0)
    client.update({f"k{i}": i for i in range(20)})
    sent = counted(client)
    operation(client)
    assert len(sent) == requests


def test_a_refused_conditional_write_teaches_the_cache(client: Client, other: KVBucket) -> None:
    other["k"] = 1
    assert not client.set_if("k", 2, None)
    sent = counted(client)
    assert client.versioned("k").value == 1
    assert client.get("k") == 1
    assert sent == []


# cache coherence


def test_a_write_is_read_back_at_once(client: Client) -> None:
    client.set("k", 1)
    assert client.get("k") == 1
    client.set("k", 2)
    assert client.get("k") == 2
    client.set("k/x", 3)
    assert client.get("k") == {"x": 3}


def test_another_clients_write_is_seen_after_the_ttl_with_revalidation(
    make: Make, other: KVBucket, clock: Any
) -> None:
    client = make(ttl=5.0, timer=clock)
    other["k"] = 1
    other["same"] = "s"
    assert client.get("k") == 1
    assert client.get("same") == "s"
    other["k"] = 2
    assert client.get("k") == 1
    clock.advance(5.1)
    sent = counted(client)
    assert client.get("k") == 2
    assert client.get("same") == "s"
    assert [request.headers for request in sent] == [
        {"If-None-Match": sent[0].headers["If-None-Match"]},
        {"If-None-Match": sent[1].headers["If-None-Match"]},
    ]
    sent.clear()
    assert client.get("same") == "s"
    assert sent == []


def test_a_write_through_a_view_drops_the_parents_cached_read(client: Client) -> None:
    client.set("cfg", {"x": 1})
    assert client.get("cfg") == {"x": 1}
    client.view("cfg").set("x", 2)
    assert client.get("cfg") == {"x": 2}


def test_popping_a_list_item_drops_the_cached_list(client: Client) -> None:
    client.set("l", ["a", "b", "c"])
    assert client.get("l/2") == "b"
    assert client.pop("l/1") == "a"
    assert client.get("l/2") == "c"
    assert client.get("l") == ["b", "c"]


# errors


def test_a_bad_key_or_value_is_refused_before_sending(make: Make) -> None:
    client = make()
    sent = counted(client)
    with pytest.raises(InvalidPathError) as bad_path:
        client.set("a//b", 1)
    assert isinstance(bad_path.value, ValueError)
    with pytest.raises(TypeError):
        client.set("k", object())
    with pytest.raises(TypeError):
        client.increment("n", "1")
    with pytest.raises(TypeError):
        client.merge("obj", [1])
    assert client.get("a//b", "none") == "none"
    assert sent == []


def test_incrementing_text_is_a_conflict(client: Client) -> None:
    client.set("t", "text")
    with pytest.raises(ConflictError):
        client.increment("t")


def test_an_unknown_api_key_is_an_authentication_error(make: Make) -> None:
    client = make(api_key="no-such-key", ttl=0)
    with pytest.raises(AuthenticationError):
        client.get("k")


def test_no_server_is_a_transport_error(make: Make, closed_url: str) -> None:
    client = make(url=closed_url, timeout=0.5)
    with pytest.raises(TransportError):
        client.get("k")


def test_a_server_that_never_answers_times_out_within_the_deadline(make: Make) -> None:
    with fault_server() as fault:
        fault.hang = True
        client = make(url=fault.url, timeout=0.5, ttl=0)
        start = time.monotonic()
        with pytest.raises(KvpioTimeoutError):
            client.get("k")
        assert time.monotonic() - start < 2.0


def test_a_read_is_retried_after_a_503_and_an_increment_is_not(make: Make) -> None:
    with fault_server() as fault:
        fault.answer(503, b'{"error": "busy"}', Retry_After="0")
        client = make(url=fault.url, timeout=0.5, ttl=0)
        with pytest.raises(ServerError):
            client.get("k")
        assert len(fault.requests) > 1
        fault.requests.clear()
        with pytest.raises(ServerError):
            client.increment("n")
        assert len(fault.requests) == 1


def test_an_empty_answer_without_the_missing_header_is_a_protocol_error(make: Make) -> None:
    with fault_server() as fault:
        fault.answer(200, b"")
        client = make(url=fault.url, ttl=0)
        with pytest.raises(ProtocolError):
            client.get("k")


# the change feed


def test_a_watch_yields_a_snapshot_then_changes_with_full_paths(
    client: Client, other: KVBucket
) -> None:
    other["cfg"] = {"a": 1}
    collector = client.follow("cfg")
    try:
        assert collector.wait_for(1) == [Change("snapshot", "cfg", {"a": 1}, 1)]
        other["cfg/b"] = [1]
        del other["cfg/a"]
        other["elsewhere"] = 1
        other["cfg"] = 2
        assert collector.wait_for(4)[1:] == [
            Change("put", "cfg/b", [1], 2),
            Change("delete", "cfg/a", None, 3),
            Change("put", "cfg", 2, 5),
        ]
    finally:
        collector.stop()
    assert collector.error is None


def test_a_watch_of_a_view_follows_the_view_path(client: Client, other: KVBucket) -> None:
    collector = client.view("users").follow("ann")
    try:
        assert collector.wait_for(1) == [Change("delete", "users/ann", None, 0)]
        other["users/ann/age"] = 7
        assert collector.wait_for(2)[1] == Change("put", "users/ann/age", 7, 1)
    finally:
        collector.stop()


def test_a_watch_from_a_revision_resumes_after_it_without_a_snapshot(
    client: Client, other: KVBucket
) -> None:
    for n in range(3):
        other["n"] = n
    collector = client.follow("n", revision=1)
    try:
        assert collector.wait_for(2) == [Change("put", "n", 1, 2), Change("put", "n", 2, 3)]
    finally:
        collector.stop()


def test_closing_a_blocked_watch_from_elsewhere_ends_its_iteration(client: Client) -> None:
    collector = client.follow()
    collector.wait_for(1)
    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 2
    assert collector.error is None


def test_a_server_restart_in_the_middle_of_a_watch_loses_no_change(
    make: Make, tmp_path: Any
) -> None:
    db = str(tmp_path / "kvpio.sqlite3")
    server = start_server(db, workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    account = new_account(server)
    writer = KVBucket(account.url, account.api_key, ttl=0)
    collector = make(account.url, account.api_key).follow("n")
    try:
        collector.wait_for(1)
        for n in range(100):
            writer["n"] = n
        server.stop()
        server = start_server(db, workers=2, port=port, api_key=server.api_key)
        for n in range(100, 200):
            writer["n"] = n
        changes = collector.wait_for(201)[1:]
        assert [change.kind for change in changes] == ["put"] * 200
        assert [change.value for change in changes] == list(range(200))
        assert [change.revision for change in changes] == list(range(1, 201))
    finally:
        collector.stop()
        server.stop()


# the live cache


def test_a_live_cache_sees_a_write_of_another_process_through_another_worker(
    make: Make, server2: RunningServer
) -> None:
    account = new_account(server2)
    a = make(account.url, account.api_key, ttl=60, live=True)
    b = KVBucket(account.url, account.api_key)
    b["k"] = "old"
    assert a.until(lambda: a.cache_info().live)
    # b's write reaches a's feed after a while: read until an entry stays cached.
    assert a.until(lambda: a.get("k") == "old" and a.cache_info().currsize == 1)
    hits = a.cache_info().hits
    assert a.get("k") == "old" and a.cache_info().hits == hits + 1
    for process in writers(account, 1, 1):
        assert process.wait(60) == 0
    # The ttl is a minute: only the feed can make the next reads see it.
    assert a.until(lambda: a.get("w0") == 0, timeout=5)
    b["k"] = "new"
    assert a.until(lambda: a.get("k") == "new", timeout=5)
    assert a.cache_info().live


def test_a_live_cache_falls_back_to_the_ttl_while_the_feed_is_down(make: Make, clock: Any) -> None:
    server = start_server()
    account = new_account(server)
    a = make(account.url, account.api_key, ttl=5, live=True, timer=clock, timeout=1)
    try:
        assert a.until(lambda: a.cache_info().live)
        a.set("k", 1)
        # Our own write's event drops what a read stored meanwhile: read until one is cached.
        assert a.until(lambda: a.get("k") == 1 and a.cache_info().currsize == 1)
        clock.advance(60)
        assert a.get("k") == 1, "live: an entry outlives its ttl"
        server.stop()
        assert a.until(lambda: not a.cache_info().live)
        with pytest.raises(TransportError):
            a.get("k")  # past its ttl and no feed: asked of the (stopped) server
    finally:
        server.stop()


def test_cache_info_says_whether_the_cache_is_live(make: Make) -> None:
    plain = make()
    live = make(live=True)
    assert not plain.cache_info().live
    assert live.until(lambda: live.cache_info().live)


def test_live_needs_a_cache(make: Make) -> None:
    with pytest.raises(ValueError, match="needs a cache"):
        make(ttl=0, live=True)
