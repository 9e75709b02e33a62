"""The asyncio client across pickling and fork, and its live connection, against real servers.

What both clients share (watches, resumes, the live cache) is in
test_clients_contract.py; these are the async counterparts of test_bucket.py's
and test_watch.py's pickling and fork tests, where the blocking client's
threads become an event loop's tasks.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
from typing import Any

from kvpio_mapping import AsyncKVBucket, KVBucket, connect, connect_async
from kvpio_mapping.async_connection import AsyncConnection
from kvpio_mapping.testing import TestAccount


async def until_async(condition: Any, timeout: float = 10.0) -> bool:
    """Await ``condition()`` every 5 ms until it is true or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.005)
    return bool(await condition())


def test_a_pickled_async_view_keeps_its_configuration_and_path(kvpio_account: TestAccount) -> None:
    async def main() -> None:
        bucket = AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, ttl=3.0, maxsize=7)
        await bucket.set("a", {"b": {"x": 1}})
        clone = pickle.loads(pickle.dumps(bucket.view("a/b")))
        assert (clone.url, clone.path) == (bucket.url, "a/b")
        assert (clone.state.cache.ttl, clone.state.cache.maxsize) == (3.0, 7)
        assert clone.state.transport is not bucket.state.transport
        assert await clone.copy() == {"x": 1}
        await clone.set("y", 2)
        assert await bucket.get("a/b") == {"x": 1, "y": 2}
        await clone.aclose()
        await bucket.aclose()

    asyncio.run(main())


def test_a_pickled_live_async_bucket_opens_its_own_feed_in_the_loop_it_is_used_in(
    kvpio_account: TestAccount,
) -> None:
    async def made() -> AsyncKVBucket:
        return AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, live=True)

    async def used(copy: AsyncKVBucket) -> bool:
        assert not copy.cache_info().live  # unpickled outside a loop: no feed yet
        await copy.get("probe")  # the first miss starts it, in this loop
        live = await until_async(lambda: asyncio.sleep(0, copy.cache_info().live))
        await copy.aclose()
        return live

    original = asyncio.run(made())
    copy = pickle.loads(pickle.dumps(original))
    assert copy.state.live
    assert asyncio.run(used(copy))


def test_a_pickled_live_async_connection_stays_live_and_its_views_share_the_feed(
    kvpio_account: TestAccount,
) -> None:
    async def main() -> None:
        conn = connect_async(kvpio_account.url, kvpio_account.api_key, live=True)
        copy: AsyncConnection = pickle.loads(pickle.dumps(conn))
        view = copy.bucket.view("cfg")
        assert view.state is copy.bucket.state and view.state.live
        assert await until_async(lambda: asyncio.sleep(0, view.cache_info().live))
        await copy.aclose()
        await conn.aclose()

    asyncio.run(main())


def fork_and_run(child: Any) -> int:
    """Fork; the child runs ``asyncio.run(child())`` in a loop of its own (exit 0 if that
    returns True) and is killed after 10 s."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)
        status = 1
        try:
            status = 0 if asyncio.run(child()) else 1
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def test_an_async_bucket_forked_from_a_running_loop_uses_its_own_connections_in_the_child(
    kvpio_account: TestAccount,
) -> None:
    async def main() -> None:
        bucket = AsyncKVBucket(kvpio_account.url, kvpio_account.api_key)
        await bucket.set("parent", 1)
        assert await bucket.get("parent") == 1  # a pooled connection stays open
        parents = bucket.state.transport.client

        async def child() -> bool:
            bucket.invalidate()
            fresh = bucket.state.transport.client is not parents
            if fresh and await bucket.get("parent") == 1:
                await bucket.set("child", 2)
                return True
            return False

        assert fork_and_run(child) == 0
        assert bucket.state.transport.client is parents
        assert await bucket.get("child") == 2
        await bucket.set("after", 3)
        assert await bucket.pop("after") == 3
        await bucket.aclose()

    asyncio.run(main())


def _child_follows(bucket: AsyncKVBucket, ready: Any, done: Any) -> None:
    async def follow() -> bool:
        await bucket.get("probe")  # the first miss starts the child's own feed
        ok = await until_async(lambda: asyncio.sleep(0, bucket.cache_info().live))
        assert await bucket.get("k") == "before"
        ready.set()
        ok = ok and await until_async(lambda: _equals(bucket, "k", "after"))
        await bucket.aclose()
        return ok

    done.put(asyncio.run(follow()))


async def _equals(bucket: AsyncKVBucket, key: str, value: Any) -> bool:
    return bool(await bucket.get(key) == value)


def test_a_forked_child_of_a_live_async_bucket_opens_its_own_feed(
    kvpio_account: TestAccount,
) -> None:
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Queue()

    async def main() -> int | None:
        bucket = AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, ttl=60, live=True)
        await bucket.set("probe", 1)
        await bucket.set("k", "before")
        assert await until_async(lambda: asyncio.sleep(0, bucket.cache_info().live))
        child = context.Process(target=_child_follows, args=(bucket, ready, done))
        child.start()
        try:
            assert await asyncio.to_thread(ready.wait, 20)
            KVBucket(kvpio_account.url, kvpio_account.api_key)["k"] = "after"
            assert await asyncio.to_thread(done.get, timeout=20) is True
            # The parent's own feed ran on meanwhile and saw the same write.
            assert await until_async(lambda: _equals(bucket, "k", "after"))
        finally:
            await asyncio.to_thread(child.join, 20)
            await bucket.aclose()
        return child.exitcode

    assert asyncio.run(main()) == 0


def test_a_live_async_connection_drops_renderings_of_templates_others_change(
    kvpio_account: TestAccount,
) -> None:
    async def main() -> None:
        other = KVBucket(kvpio_account.url, kvpio_account.api_key)
        async with connect_async(
            kvpio_account.url, kvpio_account.api_key, ttl=60, live=True
        ) as mine:
            await mine.templates.set("hi", "Hello {{ name }}")
            other["name"] = "Ann"
            assert await until_async(lambda: asyncio.sleep(0, mine.bucket.cache_info().live))
            assert await until_async(lambda: _rendered(mine, "Hello Ann"))
            other["name"] = "Bob"
            assert await until_async(lambda: _rendered(mine, "Hello Bob"), timeout=5)
            async with connect_async(kvpio_account.url, kvpio_account.api_key) as theirs:
                await theirs.templates.set("hi", "Bye {{ name }}")
            assert await until_async(lambda: _rendered(mine, "Bye Bob"), timeout=5)

    asyncio.run(main())


async def _rendered(conn: AsyncConnection, text: str) -> bool:
    return await conn.templates.get("hi") == text


def test_an_async_template_watch_renders_again_when_a_used_key_or_the_template_changes(
    kvpio_account: TestAccount,
) -> None:
    other = connect(kvpio_account.url, kvpio_account.api_key)
    other.bucket["user"] = {"name": "Ann"}
    other.templates["hi"] = "Hello {{ user.name }}"
    texts: list[str | None] = []

    async def main() -> None:
        async with connect_async(kvpio_account.url, kvpio_account.api_key) as conn:
            watch = conn.templates.watch("hi")

            async def collect() -> None:
                async for text in watch:
                    texts.append(text)

            reader = asyncio.create_task(collect())
            assert await until_async(lambda: asyncio.sleep(0, texts == ["Hello Ann"]))
            other.bucket["unused"] = 1
            other.bucket["user/name"] = "Bob"
            assert await until_async(lambda: asyncio.sleep(0, texts == ["Hello Ann", "Hello Bob"]))
            other.templates["hi"] = "Bye {{ user.name }}"
            assert await until_async(lambda: asyncio.sleep(0, texts[-1:] == ["Bye Bob"]))
            await watch.aclose()  # from another task than the one iterating it
            await asyncio.wait_for(reader, 5)

    asyncio.run(main())
    other.close()
    assert texts == ["Hello Ann", "Hello Bob", "Bye Bob"]


def test_a_cancelled_task_iterating_a_watch_stays_cancelled(kvpio_account: TestAccount) -> None:
    async def main() -> None:
        async with AsyncKVBucket(kvpio_account.url, kvpio_account.api_key) as bucket:
            watch = bucket.watch()
            seen: list[Any] = []

            async def collect() -> None:
                async for change in watch:
                    seen.append(change)

            reader = asyncio.create_task(collect())
            assert await until_async(lambda: asyncio.sleep(0, len(seen) == 1))
            reader.cancel()  # the owner's own cancellation is not taken for a close
            await asyncio.wait([reader])
            assert reader.cancelled()
            await watch.aclose()
            assert [change async for change in watch] == []

    asyncio.run(main())
