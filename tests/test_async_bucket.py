"""What only the asyncio client has: iteration, its connection, and an event loop that runs on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest
from faults import fault_server

from kvpio_mapping import AsyncKVBucket, KVBucket, connect_async


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


async def _longest_stall(work: Any) -> float:
    """The longest the event loop went without running a 1 ms heartbeat while ``work`` ran."""
    longest = 0.0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.01)
    try:
        await work
    finally:
        done.set()
        await beat
    return longest


def test_the_event_loop_runs_on_during_1000_mixed_operations(kvpio_account: Any) -> None:
    async def mixed() -> float:
        async with AsyncKVBucket(kvpio_account.url, kvpio_account.api_key) as bucket:
            await bucket.get("warm")  # the first request loads httpx's lazy parts, once

            async def work() -> None:
                for step in range(250):
                    await bucket.set(f"k{step % 20}", {"step": step})
                    await bucket.get(f"k{(step * 7) % 20}")
                    await bucket.increment("counter")
                    await bucket.contains(f"k{step % 25}")

            return await _longest_stall(work())

    async def blocking() -> None:
        with KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0) as bucket:
            for step in range(200):
                bucket.get(f"k{step % 20}")

    ours = asyncio.run(mixed())
    theirs = asyncio.run(_longest_stall(blocking()))
    # Ours stalls the loop about 2 ms at most on an idle machine; the limit leaves room
    # for a machine shared with other work. A blocking client stalls it for all its calls.
    assert ours < 0.05
    assert theirs > 5 * ours


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
        concurrent = asyncio.run(gets(fault.url, True))
    # About 20 ms plus the client's own work for 100 requests (0.1 to 0.4 s on a loaded
    # 2-core machine) against at least 2 s.
    assert sequential > 2.0
    assert concurrent < sequential / 4


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
