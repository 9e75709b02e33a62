"""What only the asyncio client has: iteration, its connection, and an event loop that runs on."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from typing import Any

import pytest
from faults import fault_server
from feeds import writers

from kvpio_mapping import AsyncKVBucket, KVBucket, KvpioTimeoutError, connect_async


def test_async_iteration_lists_the_keys_in_one_request(kvpio_account: Any) -> None:
    async def main() -> list[str]:
        async with AsyncKVBucket(kvpio_account.url, kvpio_account.api_key) as bucket:
            await bucket.update({"a": 1, "b": 2})
            return [key async for key in bucket]

    assert asyncio.run(main()) == ["a", "b"]


def test_a_bucket_write_drops_the_renderings_that_used_it(kvpio_account: Any) -> None:
    async def main() -> list[str]:
        async with connect_async(kvpio_account.url, kvpio_account.api_key) as conn:
            await conn.bucket.set("name", "Ada")
            await conn.templates.set("hello", "Hello {{ name }}")
            first = await conn.templates.get("hello")
            await conn.bucket.set("name", "Grace")
            return [first, await conn.templates.get("hello"), await conn.templates.source("hello")]

    assert asyncio.run(main()) == ["Hello Ada", "Hello Grace", "Hello {{ name }}"]


def test_a_missing_template_is_a_key_error(kvpio_account: Any) -> None:
    async def main() -> None:
        async with connect_async(kvpio_account.url, kvpio_account.api_key) as conn:
            assert not await conn.templates.contains("nothing")
            await conn.templates.get("nothing")

    with pytest.raises(KeyError):
        asyncio.run(main())


async def _loop_turns(work: Any) -> tuple[int, float]:
    """How many times the event loop ran another task while ``work`` ran, and the most
    CPU time the loop spent between two of those turns.

    A client that awaits its I/O hands the loop back at least once a request; one that
    blocks never does. CPU time, unlike wall time, does not grow when a busy machine
    runs other processes in between, so both hold on a loaded machine too.
    """
    turns = 0
    longest = 0.0
    done = False

    async def other_task() -> None:
        nonlocal turns, longest
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0)
            now = time.thread_time()
            turns, longest = turns + 1, max(longest, now - last)
            last = now

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    before, longest = turns, 0.0
    gc.freeze()  # the test process's own heap is large: a full collection of it is not ours
    try:
        await work
    finally:
        done = True
        await other
        gc.unfreeze()
    return turns - before, longest


def test_the_event_loop_runs_on_during_1000_mixed_operations(kvpio_account: Any) -> None:
    async def mixed() -> tuple[int, float]:
        async with AsyncKVBucket(kvpio_account.url, kvpio_account.api_key) as bucket:
            # The first request of each kind loads lazy parts (httpx's, the codecs'), once.
            await bucket.get("warm")
            await bucket.set("warm", {"step": 0})
            await bucket.increment("warm counter")
            await bucket.contains("warm")

            async def work() -> None:
                for step in range(250):
                    await bucket.set(f"k{step % 20}", {"step": step})
                    await bucket.get(f"k{(step * 7) % 20}")
                    await bucket.increment("counter")
                    await bucket.contains(f"k{step % 25}")

            return await _loop_turns(work())

    async def blocking() -> None:
        with KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0) as bucket:
            for step in range(200):
                bucket.get(f"k{step % 20}")

    # The 250 sets and 250 increments are requests whatever the cache holds: each one
    # lets the loop run other work while it waits, and no step between two turns holds
    # the loop for more than a few milliseconds of CPU (under 1 ms here; the bound
    # leaves room for a collection or a cache-cold step on a loaded machine, and
    # catches work that grows with the operations). The blocking client never lets it turn.
    turns, longest = asyncio.run(mixed())
    assert turns >= 500
    assert longest < 0.025, longest
    assert asyncio.run(_loop_turns(blocking()))[0] <= 1


def test_the_event_loop_runs_on_while_a_watch_and_a_live_feed_wait_for_changes(
    kvpio_account: Any,
) -> None:
    seen: list[int] = []

    async def follow() -> tuple[int, float]:
        bucket = AsyncKVBucket(kvpio_account.url, kvpio_account.api_key, live=True)
        async with bucket, bucket.watch("w0") as watch:
            await anext(watch)  # the snapshot

            async def work() -> None:
                writer = writers(kvpio_account, 1, 100)[0]
                seen.extend([(await anext(watch)).value for _ in range(100)])
                assert await asyncio.to_thread(writer.wait, 60) == 0

            return await _loop_turns(work())

    # A writer process stores 100 values one by one; while the watch (and the live
    # feed's task) wait for each, the other task runs. A blocking read never lets it.
    turns, _ = asyncio.run(follow())
    assert seen == list(range(100))
    assert turns >= 100


@pytest.mark.slow
def test_100_concurrent_misses_take_far_less_than_100_sequential() -> None:
    async def gets(url: str, concurrent: bool) -> float:
        async with AsyncKVBucket(url, "key", ttl=0) as bucket:
            await bucket.get("warm")
            start = time.perf_counter()
            if concurrent:
                await asyncio.gather(*(bucket.get(f"k{n}") for n in range(100)))
            else:
                for n in range(100):
                    await bucket.get(f"k{n}")
            return time.perf_counter() - start

    with fault_server() as fault:
        fault.delay = 0.02  # a server 20 ms away
        sequential = asyncio.run(gets(fault.url, False))
        one_at_a_time, fault.most_waiting = fault.most_waiting, 0
        # Ten times as far: the client's own work of starting 100 requests (0.1 to 0.4 s
        # on a loaded 2-core machine) overlaps their waits, as it may not within 20 ms.
        fault.delay = 0.2
        concurrent = asyncio.run(gets(fault.url, True))
    # The server saw them wait side by side, where the sequential ones came one by one:
    # 100 requests to a server ten times as far take far less than 100 in a row.
    assert one_at_a_time == 1
    assert fault.most_waiting >= 10
    assert sequential > 2.0
    assert concurrent < sequential / 2


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_server_dripping_its_answer_is_given_up_on_at_the_timeout(part: str) -> None:
    async def read(url: str) -> float:
        async with AsyncKVBucket(url, "key", timeout=0.5, ttl=0) as bucket:
            started = time.monotonic()
            with pytest.raises(KvpioTimeoutError, match=r"within the timeout of 0\.5 s"):
                await bucket.get("k")
            return time.monotonic() - started

    with fault_server() as fault:
        fault.drip(part)
        assert asyncio.run(read(fault.url)) < 2.0  # the drip takes over 4 s
        assert len(fault.requests) == 1


def test_without_httpx_the_blocking_client_works_and_the_async_one_names_its_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['httpx'] = None\n"
        "import kvpio_mapping\n"
        "assert kvpio_mapping.KVBucket and kvpio_mapping.connect\n"
        "try:\n"
        "    kvpio_mapping.AsyncKVBucket\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "AsyncKVBucket needs httpx: pip install 'kvpio-mapping[async]'\n"
