"""Watching and the live cache against real ``kvpio serve`` processes.

Writers are separate processes or separate connections (so, with two
workers, some of their writes go through the other worker); every wait is
bounded in time.
"""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvpio_mapping import KVBucket, TransportError, connect
from kvpio_mapping.changes import Change, Event, parse_events
from kvpio_mapping.testing import RunningServer, TestAccount, new_account, run_server, start_server
from kvpio_mapping.watch import Watch

ROOT = Path(__file__).resolve().parents[1]


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class Collector:
    """Iterates a watch in a thread, collecting its changes."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.changes: list[Change] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for change in self.watch:
                self.changes.append(change)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Change]:
        assert until(lambda: len(self.changes) >= count, timeout), self.changes[-5:]
        return self.changes[:count]

    def stop(self) -> None:
        self.watch.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def server2() -> Iterator[RunningServer]:
    """A server with two workers."""
    with run_server(workers=2) as server:
        yield server


# parsing


def test_parse_events_reads_fields_comments_and_id_only_blocks() -> None:
    lines = [
        ": keep-alive",
        "id: 4",
        "",
        "event: put",
        "data: {",
        "data: }",
        "",
        "data:x",
        "id:7",
        "",
    ]
    assert list(parse_events(lines)) == [
        Event("", "", "4"),
        Event("put", "{\n}", None),
        Event("message", "x", "7"),
    ]


# watch


def test_watch_yields_snapshot_then_changes_with_full_paths(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    bucket["cfg"] = {"a": 1}
    collector = Collector(bucket.watch("cfg"))
    try:
        assert collector.wait_for(1) == [Change("snapshot", "cfg", {"a": 1}, 1)]
        bucket["cfg/b"] = [1]
        del bucket["cfg/a"]
        assert collector.wait_for(3)[1:] == [
            Change("put", "cfg/b", [1], 2),
            Change("delete", "cfg/a", None, 3),
        ]
    finally:
        collector.stop()


def test_watch_of_a_view_follows_the_view_path(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    collector = Collector(bucket.view("users").watch("ann"))
    try:
        assert collector.wait_for(1) == [Change("delete", "users/ann", None, 0)]
        bucket["users/ann/age"] = 7
        assert collector.wait_for(2)[1] == Change("put", "users/ann/age", 7, 1)
    finally:
        collector.stop()


def test_close_from_another_thread_ends_a_blocked_iteration(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    collector = Collector(bucket.watch())
    collector.wait_for(1)
    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 2
    assert collector.error is None


WRITER = """
import sys
from kvpio_mapping import KVBucket
bucket = KVBucket(sys.argv[1], sys.argv[2], ttl=0)
for n in range(int(sys.argv[4])):
    bucket[sys.argv[3]] = n
"""


def writers(account: TestAccount, count: int, writes: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, account.url, account.api_key, f"w{w}", str(writes)],
            cwd=ROOT,
        )
        for w in range(count)
    ]


def test_a_thousand_changes_from_four_writers_arrive_in_order_without_a_gap(
    server2: RunningServer,
) -> None:
    account = new_account(server2)
    bucket = KVBucket(account.url, account.api_key)
    collector = Collector(bucket.watch())
    try:
        collector.wait_for(1)
        for process in writers(account, 4, 250):
            assert process.wait(60) == 0
        changes = collector.wait_for(1001)[1:]
        assert [change.revision for change in changes] == list(range(1, 1001))
        for w in range(4):
            mine = [change.value for change in changes if change.path == f"w{w}"]
            assert mine == list(range(250))
    finally:
        collector.stop()


def test_a_server_restart_in_the_middle_loses_no_change(tmp_path: Path) -> None:
    db = str(tmp_path / "kvpio.sqlite3")
    server = start_server(db, workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    account = new_account(server)
    bucket = KVBucket(account.url, account.api_key, ttl=0)
    collector = Collector(bucket.watch("n"))
    try:
        collector.wait_for(1)
        for n in range(100):
            bucket["n"] = n
        server.stop()
        server = start_server(db, workers=2, port=port, api_key=server.api_key)
        for n in range(100, 200):
            bucket["n"] = n
        changes = collector.wait_for(201)[1:]
        assert [change.kind for change in changes] == ["put"] * 200
        assert [change.value for change in changes] == list(range(200))
        assert [change.revision for change in changes] == list(range(1, 201))
    finally:
        collector.stop()
        server.stop()


# the live cache


def test_live_cache_sees_a_write_through_another_worker(server2: RunningServer) -> None:
    account = new_account(server2)
    a = KVBucket(account.url, account.api_key, ttl=60, live=True)
    b = KVBucket(account.url, account.api_key)
    try:
        b["k"] = "old"
        assert until(lambda: a.cache_info().live)
        # b's write reaches a's feed after a while: read until an entry stays cached.
        assert until(lambda: a["k"] == "old" and a.cache_info().currsize == 1)
        hits = a.cache_info().hits
        assert a["k"] == "old" and a.cache_info().hits == hits + 1
        for process in writers(account, 1, 1):
            assert process.wait(60) == 0
        # The ttl is a minute: only the feed can make the next reads see it.
        assert until(lambda: a.get("w0") == 0, timeout=5)
        b["k"] = "new"
        assert until(lambda: a["k"] == "new", timeout=5)
        assert a.cache_info().live
    finally:
        a.close()


def test_live_cache_falls_back_to_the_ttl_while_the_feed_is_down(
    clock: Any,
) -> None:
    server = start_server()
    account = new_account(server)
    a = KVBucket(account.url, account.api_key, ttl=5, live=True, timer=clock)
    try:
        assert until(lambda: a.cache_info().live)
        a["k"] = 1
        # Our own write's event drops what a read stored meanwhile: read until one is cached.
        assert until(lambda: a["k"] == 1 and a.cache_info().currsize == 1)
        clock.advance(60)
        assert a["k"] == 1, "live: an entry outlives its ttl"
        server.stop()
        assert until(lambda: not a.cache_info().live)
        with pytest.raises(TransportError):
            a["k"]  # past its ttl and no feed: asked of the (stopped) server
    finally:
        a.close()
        server.stop()


def test_cache_info_says_whether_the_cache_is_live(kvpio_account: TestAccount) -> None:
    plain = KVBucket(kvpio_account.url, kvpio_account.api_key)
    live = KVBucket(kvpio_account.url, kvpio_account.api_key, live=True)
    try:
        assert not plain.cache_info().live
        assert until(lambda: live.cache_info().live)
    finally:
        live.close()
    assert not live.cache_info().live


def test_live_needs_a_cache(kvpio_account: TestAccount) -> None:
    with pytest.raises(ValueError, match="needs a cache"):
        KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0, live=True)


def test_a_pickled_live_bucket_opens_its_own_feed(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, live=True)
    copy = pickle.loads(pickle.dumps(bucket))
    try:
        assert until(lambda: copy.cache_info().live)
    finally:
        copy.close()
        bucket.close()


def test_a_pickled_live_connection_stays_live_and_its_views_share_the_feed(
    kvpio_account: TestAccount,
) -> None:
    conn = connect(kvpio_account.url, kvpio_account.api_key, live=True)
    copy = pickle.loads(pickle.dumps(conn))
    try:
        view = copy.bucket.view("cfg")
        assert view.state is copy.bucket.state and view.state.live
        assert until(lambda: view.cache_info().live)
    finally:
        copy.close()
        conn.close()


def _child_sees_writes(bucket: KVBucket, ready: Any, done: Any) -> None:
    bucket["probe"]  # the first miss starts the child's own feed
    ok = until(lambda: bucket.cache_info().live, timeout=10)
    assert bucket["k"] == "before"
    ready.set()
    ok = ok and until(lambda: bucket["k"] == "after", timeout=10)
    done.put(ok)


def test_a_forked_child_opens_its_own_feed(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=60, live=True)
    bucket["probe"] = 1
    bucket["k"] = "before"
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Queue()
    child = context.Process(target=_child_sees_writes, args=(bucket, ready, done))
    child.start()
    try:
        assert ready.wait(20)
        KVBucket(kvpio_account.url, kvpio_account.api_key)["k"] = "after"
        assert done.get(timeout=20) is True
    finally:
        child.join(20)
        bucket.close()
    assert child.exitcode == 0


def test_template_watch_renders_again_when_a_used_key_or_the_template_changes(
    kvpio_account: TestAccount,
) -> None:
    with connect(kvpio_account.url, kvpio_account.api_key) as conn:
        conn.bucket["user"] = {"name": "Ann"}
        conn.templates["hi"] = "Hello {{ user.name }}"
        watch = conn.templates.watch("hi")
        texts: list[str | None] = []
        thread = threading.Thread(target=lambda: texts.extend(watch), daemon=True)
        thread.start()
        assert until(lambda: texts == ["Hello Ann"])
        conn.bucket["unused"] = 1
        conn.bucket["user/name"] = "Bob"
        assert until(lambda: texts == ["Hello Ann", "Hello Bob"])
        conn.templates["hi"] = "Bye {{ user.name }}"
        assert until(lambda: texts[-1:] == ["Bye Bob"])
        watch.close()
        thread.join(5)
        assert not thread.is_alive()
        assert texts == ["Hello Ann", "Hello Bob", "Bye Bob"]


def test_a_live_connection_drops_renderings_of_templates_others_change(
    kvpio_account: TestAccount,
) -> None:
    mine = connect(kvpio_account.url, kvpio_account.api_key, ttl=60, live=True)
    other = connect(kvpio_account.url, kvpio_account.api_key)
    try:
        other.templates["hi"] = "one"
        assert until(lambda: mine.bucket.cache_info().live)
        assert mine.templates["hi"] == "one"
        other.templates["hi"] = "two"
        assert until(lambda: mine.templates["hi"] == "two", timeout=5)
    finally:
        mine.close()
        other.close()
