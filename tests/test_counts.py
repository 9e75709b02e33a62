"""``len()`` and ``bool()`` of a bucket or a view: one small count request, cached as reads are."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from kvpio_mapping import AsyncKVBucket, KVBucket
from kvpio_mapping.testing import TestAccount

COUNT = re.compile(r".*\?count=true$")


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def bucket(kvpio_account: TestAccount) -> KVBucket:
    return KVBucket(kvpio_account.url, kvpio_account.api_key)


@pytest.fixture
def other(kvpio_account: TestAccount) -> KVBucket:
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


def test_len_and_bool_are_one_count_request_each_uncached(
    kvpio_account: TestAccount, count_requests: Any
) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    sent = count_requests(bucket)
    assert not bucket and len(bucket) == 0
    bucket.update({f"k{i}": i for i in range(2000)})
    sent.reset()
    assert len(bucket) == 2000
    assert bucket
    assert sent.sent == [("GET", "bucket/?count=true")] * 2


def test_len_of_a_view_counts_an_object_a_list_and_is_0_for_a_scalar_or_nothing(
    bucket: KVBucket, count_requests: Any
) -> None:
    bucket.update({"o": {f"m{i}": i for i in range(500)}, "l": [1, 2, 3], "s": "text"})
    bucket.invalidate()
    sent = count_requests(bucket)
    lengths = {path: len(bucket.view(path)) for path in ("o", "l", "s", "nothing", "o/m1")}
    assert lengths == {"o": 500, "l": 3, "s": 0, "nothing": 0, "o/m1": 0}
    assert [target for _method, target in sent.sent] == [
        f"bucket/{path}?count=true" for path in ("o", "l", "s", "nothing", "o/m1")
    ]
    assert not bucket.view("s") and bucket.view("l")
    for path in lengths:
        assert len(bucket.view(path)) == len(list(bucket.view(path)))


def test_a_count_is_cached_and_own_writes_drop_it_at_once(
    bucket: KVBucket, other: KVBucket, count_requests: Any
) -> None:
    bucket.update({"a": 1, "o": {"x": 1}})
    sent = count_requests(bucket)
    assert len(bucket) == 2 and len(bucket.view("o")) == 1
    assert len(bucket) == 2 and bool(bucket) and len(bucket.view("o")) == 1
    assert sent.count == 2
    writes: list[Callable[[], Any]] = [
        lambda: bucket.__setitem__("b", 2),
        lambda: bucket.view("o").__setitem__("y", 2),
        lambda: bucket.__setitem__("c/d", 3),
        lambda: bucket.pop("a"),
        lambda: bucket.increment("n"),
        lambda: bucket.append("o/list", 1),
        lambda: bucket.merge("o", {"z": 1}),
        lambda: bucket.update({"e": 1}),
        lambda: bucket.transact(lambda tx: tx.__setitem__("f", 1)),
        lambda: bucket.view("o").clear(),
        lambda: bucket.clear(),
    ]
    for write in writes:
        write()
        expected = other.copy()
        sent.reset()
        assert len(bucket) == len(expected)
        view = expected.get("o")
        assert len(bucket.view("o")) == (len(view) if isinstance(view, dict) else 0)
        assert sent.count <= 2
        sent.reset()
        assert len(bucket) == len(expected) and sent.count == 0


def test_another_clients_write_shows_once_the_count_expires(
    kvpio_account: TestAccount, other: KVBucket, clock: Any, count_requests: Any
) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=5, timer=clock)
    assert len(bucket) == 0
    other["k"] = 1
    sent = count_requests(bucket)
    assert len(bucket) == 0 and sent.count == 0
    clock.advance(6)
    assert len(bucket) == 1 and sent.count == 1


def test_a_cached_value_or_whole_read_answers_len_without_a_request(
    bucket: KVBucket, count_requests: Any
) -> None:
    bucket.update({"o": {"x": 1, "y": [1, 2]}, "p": 1})
    bucket["o"]
    dict(bucket)
    sent = count_requests(bucket)
    assert len(bucket.view("o")) == 2 and len(bucket.view("o/y")) == 2
    assert len(bucket) == 2 and len(bucket.view("p")) == 0
    assert sent.count == 0
    assert bucket.cache_info().hits >= 4


def test_the_live_cache_drops_a_count_when_another_client_changes_it(
    kvpio_account: TestAccount, other: KVBucket
) -> None:
    live = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=60, live=True)
    try:
        assert until(lambda: live.cache_info().live)
        other["o"] = {"a": 1}
        assert until(lambda: len(live) == 1 and len(live.view("o")) == 1)
        other["o/b"] = 2
        assert until(lambda: len(live.view("o")) == 2)
        other["n"] = 1
        assert until(lambda: len(live) == 2)
    finally:
        live.close()


def test_async_size_is_one_count_request(kvpio_account: TestAccount) -> None:
    async def main() -> tuple[list[int], list[str]]:
        async with AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0) as bucket:
            await bucket.update({"a": 1, "o": {"x": [1, 2, 3]}})
            transport = bucket.state.transport
            sent: list[str] = []
            original = transport.send

            async def send(request: Any) -> Any:
                sent.append(request.target)
                return await original(request)

            transport.send = send
            sizes = [
                await bucket.size(),
                await bucket.view("o").size(),
                await bucket.view("o/x").size(),
                await bucket.view("a").size(),
            ]
            return sizes, sent

    sizes, sent = asyncio.run(main())
    assert sizes == [2, 1, 3, 0]
    assert sent == [f"bucket/{path}?count=true" for path in ("", "o", "o/x", "a")]


def test_the_async_live_cache_drops_a_count_when_another_client_changes_it(
    kvpio_account: TestAccount, other: KVBucket
) -> None:
    async def main() -> list[int]:
        bucket = AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, ttl=60, live=True)
        sizes = []
        async with bucket:
            for _ in range(2000):
                if bucket.cache_info().live:
                    break
                await asyncio.sleep(0.005)
            sizes.append(await bucket.size())
            other["k"] = 1
            for _ in range(2000):
                if await bucket.size() == 1:
                    break
                await asyncio.sleep(0.005)
            sizes.append(await bucket.size())
        return sizes

    assert asyncio.run(main()) == [0, 1]


# a server from before counts: it ignores count=true


@pytest.fixture
def before_counts(kvpio_account: TestAccount) -> Iterator[responses.RequestsMock]:
    """The real server as one that predates counts: ``count=true`` is dropped on the way,
    so the answer is whatever that server gives to the same URL without it."""

    def ignoring_count(request: Any) -> tuple[int, dict[str, str], bytes]:
        url = request.url.removesuffix("?count=true")
        forwarded = urllib.request.Request(
            url, headers={"Authorization": request.headers["Authorization"]}
        )
        with urllib.request.urlopen(forwarded, timeout=10) as answer:
            kept = ("Content-Type", "ETag", "Kvpio-Missing", "Kvpio-Revision")
            headers = {name: answer.headers[name] for name in kept if name in answer.headers}
            return answer.status, headers, answer.read()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add_passthru(kvpio_account.url)
        mocked.add_callback(responses.GET, COUNT, callback=ignoring_count)
        yield mocked


def test_against_a_server_before_counts_len_counts_its_answer_then_lists_keys(
    kvpio_account: TestAccount, before_counts: responses.RequestsMock, count_requests: Any
) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket.update({"a": 1, "o": {"x": 1, "y": 2}, "l": [1, 2, 3], "s": "t"})
    sent = count_requests(bucket)
    assert len(bucket) == 4
    assert len(bucket) == 4 and bool(bucket)
    assert [len(bucket.view(path)) for path in ("o", "l", "s", "nothing")] == [2, 3, 0, 0]
    assert [target for _method, target in sent.sent] == [
        "bucket/?count=true",
        "bucket/",
        "bucket/",
        *(f"bucket/{path}?keys=true" for path in ("o", "l", "s", "nothing")),
    ]


def test_against_a_server_before_counts_a_view_counts_the_value_it_answered(
    kvpio_account: TestAccount, before_counts: responses.RequestsMock, count_requests: Any
) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket["o"] = {"x": 1, "y": 2, "z": 3}
    sent = count_requests(bucket)
    assert len(bucket.view("nothing")) == 0  # a missing answer tells nothing of the server
    assert len(bucket.view("o")) == 3
    assert len(bucket.view("o")) == 3
    assert [target for _method, target in sent.sent] == [
        "bucket/nothing?count=true",
        "bucket/o?count=true",
        "bucket/o?keys=true",
    ]
