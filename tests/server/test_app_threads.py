"""Where the app runs storage calls: reads on the loop for a local database, in read
threads for one that may wait on the network; writes to different accounts side by side;
a large body stored with the garbage collector held off."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import falcon.testing

from kvpio_mapping.server.app import LARGE_BODY, create_app
from kvpio_mapping.server.storage import MemoryStorage
from kvpio_mapping.server.storage.base import Check, Committed, Operation


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


class _Recording(MemoryStorage):
    """Memory storage that notes the thread of every read."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def authenticate(self, api_key: str) -> str | None:
        self.threads.append(threading.current_thread().name)
        return super().authenticate(api_key)

    def read(self, account: str, path: tuple[str, ...]) -> tuple[str | None, int]:
        self.threads.append(threading.current_thread().name)
        return super().read(account, path)


class _Networked(_Recording):
    reads_block: ClassVar[bool] = True
    write_threads: ClassVar[int] = 4


class _MeetingWriters(_Networked):
    """Commits wait until two run at once (or fail after a bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.meeting = threading.Barrier(2, timeout=10)

    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        self.meeting.wait()
        return super().commit(account, operations, checks, key_digest)


async def _get(storage: MemoryStorage, path: str) -> Any:
    async with falcon.testing.ASGIConductor(create_app(storage)) as conductor:
        return await conductor.simulate_get(path, headers=_auth("a-key"))


def test_reads_of_a_local_database_run_on_the_event_loop() -> None:
    storage = _Recording()
    storage.create_account("a", "", "a-key")
    storage.set("a", ("k",), 1)
    answer = asyncio.run(_get(storage, "/v1/bucket/k"))
    assert answer.status_code == 200
    assert answer.json == 1
    assert storage.threads
    assert not any(name.startswith("kvpio-read") for name in storage.threads)


def test_reads_that_may_wait_on_the_network_run_in_read_threads() -> None:
    storage = _Networked()
    storage.create_account("a", "", "a-key")
    storage.set("a", ("k",), 1)
    answer = asyncio.run(_get(storage, "/v1/bucket/k"))
    assert answer.status_code == 200
    assert answer.json == 1
    assert len(storage.threads) == 2
    assert all(name.startswith("kvpio-read") for name in storage.threads)


def test_writes_to_two_accounts_run_at_once() -> None:
    storage = _MeetingWriters()
    storage.create_account("a", "", "a-key")
    storage.create_account("b", "", "b-key")

    async def both() -> list[int]:
        async with falcon.testing.ASGIConductor(create_app(storage)) as conductor:
            answers = await asyncio.gather(
                *(
                    conductor.simulate_post("/v1/bucket/k", json=1, headers=_auth(key))
                    for key in ("a-key", "b-key")
                )
            )
        return [answer.status_code for answer in answers]

    assert asyncio.run(both()) == [200, 200]
    assert storage.get("a", ("k",)) == storage.get("b", ("k",)) == "1"


class _NotingCollector(MemoryStorage):
    """Memory storage that notes whether the collector was on during each commit."""

    def __init__(self) -> None:
        super().__init__()
        self.collecting: list[bool] = []

    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        self.collecting.append(gc.isenabled())
        return super().commit(account, operations, checks, key_digest)


def test_a_large_body_is_stored_with_the_collector_held_off_and_it_comes_back() -> None:
    storage = _NotingCollector()
    storage.create_account("a", "", "a-key")
    large = json.dumps({"items": [{"n": i} for i in range(LARGE_BODY // 8)]})
    assert len(large) > LARGE_BODY

    async def writes() -> list[int]:
        async with falcon.testing.ASGIConductor(create_app(storage)) as conductor:
            return [
                (await conductor.simulate_post(url, body=body, headers=_auth("a-key"))).status_code
                for url, body in [
                    ("/v1/bucket/big", large),
                    (
                        "/v1/bucket/?commit=true",
                        json.dumps(
                            {"operations": [{"op": "set", "path": "c", "value": json.loads(large)}]}
                        ),
                    ),
                    ("/v1/bucket/", json.dumps({"batch": json.loads(large)})),
                    ("/v1/bucket/small", "1"),
                ]
            ]

    assert gc.isenabled()
    assert asyncio.run(writes()) == [200, 200, 200, 200]
    assert storage.collecting == [False, False, False, True]
    assert gc.isenabled()


def test_a_refused_large_body_lets_go_of_its_slot_and_the_collector() -> None:
    storage = _NotingCollector()
    storage.create_account("a", "", "a-key")
    large = json.dumps({"items": [{"n": i} for i in range(LARGE_BODY // 8)]})

    async def writes() -> list[int]:
        async with falcon.testing.ASGIConductor(create_app(storage)) as conductor:
            return [
                (
                    await conductor.simulate_post(
                        "/v1/bucket/big", body=body, headers={**_auth("a-key"), **headers}
                    )
                ).status_code
                for body, headers in [
                    (large[:-1], {}),  # not JSON
                    (large, {"If-Match": '"no-such-etag"'}),  # a failed condition
                    (large, {}),
                ]
            ]

    assert asyncio.run(writes()) == [400, 412, 200]
    assert gc.isenabled()
