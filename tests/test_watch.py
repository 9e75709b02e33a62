"""The blocking client's watches and live cache against real ``kvpio serve`` processes,
beyond what test_clients_contract.py asks of both clients.

Writers are separate processes or separate connections (so, with two
workers, some of their writes go through the other worker); every wait is
bounded in time.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from typing import Any

from feeds import Collector, until, writers

from kvpio_mapping import KVBucket, connect
from kvpio_mapping.testing import RunningServer, TestAccount, new_account


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


# the live cache


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
