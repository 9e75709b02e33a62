"""The change feed (docs/protocol.md, "Live"): which events a change makes, and the
stream over HTTP against real ``kvpio serve`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import requests
from falcon.asgi import SSEvent

from kvpio_mapping.changes import Event, parse_events
from kvpio_mapping.server import feed as feed_module
from kvpio_mapping.server.feed import REREAD, Feed, StreamLimits, event_for, relation
from kvpio_mapping.server.storage import MemoryStorage
from kvpio_mapping.server.storage.base import Change
from kvpio_mapping.testing import Api, RunningServer, TestAccount, new_account, run_server

T = TypeVar("T")

STREAM = {"Accept": "text/event-stream"}


def p(key: str) -> tuple[str, ...]:
    return tuple(key.split("/")) if key else ()


# which events a change makes, for a watched path


@pytest.mark.parametrize(
    ("watched", "changed", "deleted", "expected"),
    [
        ("a", "a", False, "below"),
        ("a", "a/b/c", False, "below"),
        ("a/b", "a", False, "above"),
        ("", "a", False, "below"),
        ("a", "b", False, "unrelated"),
        ("l/3", "l/2", False, "unrelated"),
        ("l/3", "l/2", True, "reread"),
        ("l/3/x", "l/1", True, "reread"),
        ("l/1", "l/3", True, "reread"),
        ("l/01", "l/1", False, "reread"),
        ("l/x", "l/1", True, "unrelated"),
    ],
)
def test_relation_of_a_change_to_a_watched_path(
    watched: str, changed: str, deleted: bool, expected: str
) -> None:
    assert relation(p(watched), p(changed), deleted=deleted) == expected


def test_change_below_is_a_put_with_the_relative_path() -> None:
    change = Change(3, "put", p("a/b/c"), '{"x":1}')
    assert event_for(p("a"), change) == ("put", '{"path":"b/c","data":{"x":1}}')


def test_change_above_shows_the_watched_part_of_the_new_value() -> None:
    assert event_for(p("a/b"), Change(3, "put", p("a"), '{"b":[1,2]}')) == (
        "put",
        '{"path":"","data":[1,2]}',
    )
    assert event_for(p("a/b"), Change(3, "put", p("a"), '{"c":1}')) == ("delete", '{"path":""}')
    assert event_for(p("a/b"), Change(3, "delete", p("a"), None)) == ("delete", '{"path":""}')


def test_unrelated_change_makes_no_event() -> None:
    assert event_for(p("a"), Change(3, "put", p("b"), "1")) is None


def test_templates_reach_only_watches_of_the_whole_bucket() -> None:
    change = Change(3, "template", ("page",), "{{ a }}")
    assert event_for((), change) == ("template", '{"name":"page","source":"{{ a }}"}')
    assert event_for(p("a"), change) is None
    assert event_for((), Change(4, "template", ("page",), None)) == ("template", '{"name":"page"}')


def test_a_value_too_long_to_log_is_read_again() -> None:
    assert event_for(p("a"), Change(3, "reread", p("a/b"), None)) is REREAD


# the stream over HTTP


class Stream:
    """An open event stream, read in a thread into a list of events."""

    def __init__(self, api: Api, path: str, headers: dict[str, str] | None = None) -> None:
        self.response = api.get(path, headers={**STREAM, **(headers or {})}, stream=True)
        self.events: list[Event] = []
        self.done = threading.Event()
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in parse_events(self.response.iter_lines(chunk_size=None)):
                self.events.append(event)
        except (requests.RequestException, OSError, AttributeError):
            pass  # closed by the test (http.client drops its file under the reader)
        finally:
            self.done.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.events) >= count, self.events
        return self.events[:count]

    def data(self, index: int) -> Any:
        return json.loads(self.events[index].data)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError):  # the reader may have finished
            self.response.raw.shutdown()
        self.response.close()


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def open_stream(
    streams: list[Stream], api: Api, path: str, headers: dict[str, str] | None = None
) -> Stream:
    stream = Stream(api, path, headers)
    streams.append(stream)
    return stream


def test_stream_starts_with_a_snapshot_then_ready(api: Api, streams: list[Stream]) -> None:
    api.post("/v1/bucket/cfg", json={"a": 1})
    stream = open_stream(streams, api, "/v1/bucket/cfg")
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.wait_for(2) == [
        Event("snapshot", '{"data":{"a":1}}', "1"),
        Event("ready", "{}", "1"),
    ]


def test_snapshot_of_a_missing_path_says_so(api: Api, streams: list[Stream]) -> None:
    stream = open_stream(streams, api, "/v1/bucket/nothing")
    assert stream.wait_for(1)[0] == Event("snapshot", '{"missing":true}', "0")


def test_changes_come_with_relative_paths_and_revisions(api: Api, streams: list[Stream]) -> None:
    stream = open_stream(streams, api, "/v1/bucket/cfg")
    stream.wait_for(2)
    api.post("/v1/bucket/cfg/a/b", json=1)
    api.post("/v1/bucket/other", json=1)
    api.delete("/v1/bucket/cfg/a")
    api.post("/v1/bucket/cfg", json=[1])
    assert stream.wait_for(5)[2:] == [
        Event("put", '{"path":"a/b","data":1}', "1"),
        Event("delete", '{"path":"a"}', "3"),
        Event("put", '{"path":"","data":[1]}', "4"),
    ]


def test_a_commit_of_several_changes_carries_its_revision_on_the_last(
    api: Api, streams: list[Stream]
) -> None:
    stream = open_stream(streams, api, "/v1/bucket/")
    stream.wait_for(2)
    api.post("/v1/bucket/", json={"x": 1, "y": 2})
    assert stream.wait_for(4)[2:] == [
        Event("put", '{"path":"x","data":1}', None),
        Event("put", '{"path":"y","data":2}', "1"),
    ]


def test_a_watch_of_the_bucket_sees_templates(api: Api, streams: list[Stream]) -> None:
    stream = open_stream(streams, api, "/v1/bucket/")
    stream.wait_for(2)
    api.post("/v1/templates/hi", json="Hello")
    assert stream.wait_for(3)[2] == Event("template", '{"name":"hi","source":"Hello"}', "1")


def test_last_event_id_resumes_from_the_log(api: Api, streams: list[Stream]) -> None:
    for n in range(3):
        api.post("/v1/bucket/n", json=n)
    stream = open_stream(streams, api, "/v1/bucket/n", {"Last-Event-ID": "1"})
    assert stream.wait_for(3) == [
        Event("put", '{"path":"","data":1}', "2"),
        Event("put", '{"path":"","data":2}', "3"),
        Event("ready", "{}", "3"),
    ]


@pytest.mark.parametrize("last_id", ["1000000", "9" * 40])
def test_a_resume_the_log_cannot_serve_gets_a_fresh_snapshot(
    api: Api, streams: list[Stream], last_id: str
) -> None:
    api.post("/v1/bucket/n", json=5)
    stream = open_stream(streams, api, "/v1/bucket/n", {"Last-Event-ID": last_id})
    assert stream.wait_for(2) == [
        Event("snapshot", '{"data":5,"reset":true}', "1"),
        Event("ready", "{}", "1"),
    ]


def test_without_snapshot_a_stream_starts_ready(api: Api, streams: list[Stream]) -> None:
    api.post("/v1/bucket/n", json=5)
    stream = open_stream(streams, api, "/v1/bucket/?snapshot=false")
    assert stream.wait_for(1) == [Event("ready", "{}", "1")]


def test_removing_an_earlier_list_item_rereads_a_watched_item(
    api: Api, streams: list[Stream]
) -> None:
    api.post("/v1/bucket/l", json=["a", "b", "c"])
    stream = open_stream(streams, api, "/v1/bucket/l/3")
    stream.wait_for(2)
    api.delete("/v1/bucket/l/1")
    assert stream.wait_for(3)[2] == Event("delete", '{"path":""}', "2")


def test_bad_last_event_id_is_refused(api: Api) -> None:
    answer = api.get("/v1/bucket/n", headers={**STREAM, "Last-Event-ID": "x1"})
    assert answer.status_code == 400


def test_deleting_the_account_ends_its_streams(
    kvpio_server: RunningServer, streams: list[Stream]
) -> None:
    from kvpio_mapping.server.storage import open_storage

    account = new_account(kvpio_server)
    stream = open_stream(streams, Api(account.url, account.api_key), "/v1/bucket/")
    stream.wait_for(2)
    storage = open_storage(kvpio_server.db)
    try:
        storage.delete_account(account.id)
    finally:
        storage.close()
    assert stream.wait_for(3)[2] == Event("end", '{"reason": "account deleted"}', "0")
    assert stream.done.wait(5)


def test_streams_beyond_the_limits_are_refused_with_retry_after(
    streams: list[Stream],
) -> None:
    with run_server(max_streams=3, max_account_streams=2) as server:
        first, second = new_account(server), new_account(server)
        one, two = Api(first.url, first.api_key), Api(second.url, second.api_key)
        for _ in range(2):
            open_stream(streams, one, "/v1/bucket/").wait_for(1)
        refused = one.get("/v1/bucket/", headers=STREAM)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        open_stream(streams, two, "/v1/bucket/").wait_for(1)
        assert two.get("/v1/bucket/", headers=STREAM).status_code == 503
        assert two.get("/v1/bucket/").status_code == 200
        for stream in streams:
            stream.close()


def test_shutdown_ends_open_streams_at_once(streams: list[Stream]) -> None:
    with run_server(workers=2) as server:
        account = new_account(server)
        api = Api(account.url, account.api_key)
        opened = [open_stream(streams, api, "/v1/bucket/") for _ in range(4)]
        for stream in opened:
            stream.wait_for(2)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 0
        assert time.monotonic() - started < 5
        for stream in opened:
            assert stream.done.wait(5)
            assert stream.events[-1] == Event("end", '{"reason": "server closing"}', "0")


def test_a_write_through_another_worker_reaches_the_stream(
    streams: list[Stream],
) -> None:
    with run_server(workers=2) as server:
        account: TestAccount = new_account(server)
        stream = open_stream(streams, Api(account.url, account.api_key), "/v1/bucket/k")
        stream.wait_for(2)
        # Fresh connections land on either worker: some of these go through the other one.
        for n in range(6):
            requests.post(f"{account.url}/v1/bucket/k", json=n, auth=(account.api_key, ""))
        events = stream.wait_for(8)[2:]
        assert [json.loads(event.data)["data"] for event in events] == list(range(6))
        assert [event.id for event in events] == [str(n) for n in range(1, 7)]
        stream.close()


# the feed in process, over the memory backend


async def _on_loop(func: Callable[..., T], /, *args: Any) -> T:
    return func(*args)


async def _first(
    feed: Feed, count: int, allowed: Callable[[], bool] = lambda: True
) -> list[SSEvent | None]:
    async def still_allowed() -> bool:
        return allowed()

    stream = await feed.open("a", (), None, True, still_allowed)
    try:
        return [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(count)]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def _feed(keepalive: float = 5.0) -> Feed:
    storage = MemoryStorage()
    storage.create_account("a", "", "a-key")
    storage.set("a", ("x",), 1)
    return Feed(storage, StreamLimits(keepalive=keepalive), _on_loop)


def test_an_idle_stream_gets_keepalives_carrying_its_revision() -> None:
    ping = asyncio.run(_first(_feed(keepalive=0.05), 3))[2]
    assert ping is not None
    assert (ping.comment, ping.event_id) == ("keep-alive", "1")


class _OffLoopStorage(MemoryStorage):
    """A storage that fails any read a stream makes on the event loop's thread."""

    loop_thread: threading.Thread | None = None

    def _off_loop(self) -> None:
        assert threading.current_thread() is not self.loop_thread

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self._off_loop()
        return super().read(*args, **kwargs)

    def changes(self, *args: Any, **kwargs: Any) -> Any:
        self._off_loop()
        return super().changes(*args, **kwargs)

    def revision(self, *args: Any, **kwargs: Any) -> Any:
        self._off_loop()
        return super().revision(*args, **kwargs)


def test_every_storage_call_of_a_stream_goes_through_the_workers_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A storage whose reads wait on the network (PostgreSQL) must never hold the loop.
    monkeypatch.setattr(feed_module, "AUTH_SECONDS", 0.01)
    storage = _OffLoopStorage()
    storage.create_account("a", "", "a-key")
    storage.set("a", ("x",), 1)

    async def in_thread(func: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.to_thread(func, *args)

    async def scenario() -> list[SSEvent | None]:
        storage.loop_thread = threading.current_thread()
        feed = Feed(storage, StreamLimits(keepalive=0.05), in_thread)
        stream = await feed.open("a", (), 0, True, lambda: in_thread(lambda: True))
        try:
            events = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(2)]
            await asyncio.to_thread(storage.set, "a", ("y",), 2)
            feed.poke("a")
            events.append(await asyncio.wait_for(stream.__anext__(), 5))
            return events
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    events = asyncio.run(scenario())
    replayed, ready, change = (event.serialize() if event else b"" for event in events)
    assert b"event: put" in replayed and b"event: ready" in ready
    assert b'"data":2' in change, change


def test_a_key_no_longer_accepted_ends_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "AUTH_SECONDS", 0.01)
    end = asyncio.run(_first(_feed(), 3, allowed=lambda: False))[2]
    assert end is not None
    assert (end.event, end.text) == ("end", '{"reason": "key revoked"}')


def test_a_closed_stream_frees_its_place() -> None:
    feed = _feed()
    feed.limits = StreamLimits(per_worker=1)
    asyncio.run(_first(feed, 1))
    asyncio.run(_first(feed, 1))


def test_a_failing_follower_ends_its_streams_for_a_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "AUTH_SECONDS", 0.01)

    def broken() -> bool:
        raise RuntimeError("the key store is down")

    end = asyncio.run(_first(_feed(), 3, allowed=broken))[2]
    assert end is not None
    assert (end.event, end.text) == ("end", '{"reason": "server error"}')
