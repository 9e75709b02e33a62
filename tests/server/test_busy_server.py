"""One account's heavy requests leave the others served: locks, large bodies, large reads, renders.

Each test runs a real ``kvpio serve`` process on loopback; every loop is
bounded in count and in time.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
import requests
import requests.adapters

from kvpio_mapping import KVBucket
from kvpio_mapping.server.storage.sqlite import BUSY_TIMEOUT_MS
from kvpio_mapping.testing import Api, RunningServer, new_account, run_server
from kvpio_mapping.transport import Transport

pytestmark = pytest.mark.slow

KEYS = 300_000
BODIES = 4
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """One single-worker server, so every account shares one event loop and one renderer."""
    with run_server(workers=1, render_timeout=1.5) as running:
        yield running


def _api(server: RunningServer) -> Api:
    account = new_account(server)
    return Api(account.url, account.api_key)


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def _while_running(
    load: Callable[[], object],
    count: int,
    probe: Callable[[], float],
    seconds: float,
    pool: Executor | None = None,
) -> list[float]:
    """Run ``count`` copies of ``load`` and time ``probe`` until they end (or ``seconds`` pass).

    A ``pool`` of processes keeps a heavy load's client work off this process.
    """
    samples: list[float] = []
    with pool or ThreadPoolExecutor(count) as runner:
        started = time.monotonic()
        futures = [runner.submit(load) for _ in range(count)]
        while not all(f.done() for f in futures) and time.monotonic() - started < seconds:
            samples.append(probe())
            time.sleep(0.01)
        for future in futures:
            future.result(timeout=seconds)
    return samples


def _read_whole_bucket(url: str, api_key: str, times: int, least: int) -> None:
    """Read a bucket whole ``times`` times, in a process of its own."""
    http = requests.Session()
    http.auth = (api_key, "")
    for _ in range(times):
        answer = http.get(url + "/v1/bucket/?values=true", timeout=60)
        assert answer.status_code == 200 and len(answer.content) > least


class _Recording(requests.adapters.HTTPAdapter):
    """Keeps every answer the client got, retried ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[requests.Response] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        answer = super().send(request, **kwargs)
        self.answers.append(answer)
        return answer


def test_write_waiting_on_the_lock_answers_503_and_the_client_retries(
    server: RunningServer,
) -> None:
    api = _api(server)
    recording = _Recording()
    session = requests.Session()
    session.mount("http://", recording)
    transport = Transport(api.url, api.api_key, retries=3, backoff=0.2, session=session)
    holder = sqlite3.connect(server.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(BUSY_TIMEOUT_MS / 1000 + 1.0, holder.execute, ("ROLLBACK",))
    release.start()
    try:
        KVBucket(transport=transport)["retried"] = 2
    finally:
        release.join(30)
        holder.close()
    first, *retries = recording.answers
    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"] == "1"
    assert "locked" in first.json()["error"]
    assert [answer.status_code for answer in retries] == [200]
    assert api.get("/v1/bucket/retried").json() == 2


def test_a_write_waiting_on_the_lock_leaves_the_event_loop_to_other_requests(
    server: RunningServer,
) -> None:
    """Small writes commit on the event loop when the lock is free; one that finds it held
    waits in a write thread, and the worker answers reads meanwhile."""
    api = _api(server)
    api.post("/v1/bucket/read", json=1)
    holder = sqlite3.connect(server.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    answers: list[int] = []
    writer = threading.Thread(
        target=lambda: answers.append(api.post("/v1/bucket/waited", json=2).status_code)
    )
    try:
        writer.start()
        time.sleep(0.3)  # the write is waiting for the lock by now
        waits = []
        for _ in range(20):
            started = time.monotonic()
            assert api.get("/v1/bucket/read").json() == 1
            waits.append(time.monotonic() - started)
        assert answers == [] and max(waits) < 0.5
    finally:
        holder.execute("ROLLBACK")
        writer.join(30)
        holder.close()
    assert answers == [200]
    assert api.get("/v1/bucket/waited").json() == 2


def test_a_large_batch_does_not_fail_other_accounts_writes(server: RunningServer) -> None:
    big, other = _api(server), _api(server)
    body = json.dumps({f"key{i:07d}": i for i in range(300_000)}).encode()
    statuses: list[int] = []

    def small_write() -> float:
        started = time.monotonic()
        statuses.append(other.post("/v1/bucket/small", json=len(statuses), timeout=30).status_code)
        return time.monotonic() - started

    def large_write() -> None:
        assert big.post("/v1/bucket/", data=body, timeout=60).status_code == 200

    _while_running(large_write, 1, small_write, 60)
    assert set(statuses) == {200}
    assert big.get("/v1/bucket/key0299999").json() == 299_999


def test_large_reads_leave_other_accounts_small_reads_fast(server: RunningServer) -> None:
    large, other = _api(server), _api(server)
    body = json.dumps({f"key{i:06d}": {"n": i, "s": "x" * 8} for i in range(100_000)}).encode()
    assert large.post("/v1/bucket/", data=body, timeout=60).status_code == 200
    assert other.post("/v1/bucket/small", json="tiny").status_code == 200

    large_reads = functools.partial(_read_whole_bucket, large.url, large.api_key, 2, len(body) // 2)

    def small_read() -> float:
        started = time.monotonic()
        assert other.get("/v1/bucket/small", timeout=30).json() == "tiny"
        return time.monotonic() - started

    # A small read queued behind a large one would wait about as long as the large one
    # takes; timing one here scales the limit with how busy the machine is.
    started = time.monotonic()
    _read_whole_bucket(large.url, large.api_key, 1, len(body) // 2)
    limit = max(0.1, (time.monotonic() - started) / 2)
    # Best of three rounds: the machine running the suite may be busy with other work.
    rounds = []
    for _ in range(3):
        processes = ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn"))
        samples = _while_running(large_reads, 8, small_read, 60, processes)
        assert len(samples) >= 20
        rounds.append(_p99(samples))
        if rounds[-1] < limit:
            break
    assert min(rounds) < limit, (rounds, limit)


def test_one_accounts_render_flood_leaves_another_quick_render_fast(
    server: RunningServer,
) -> None:
    flood, other = _api(server), _api(server)
    assert flood.post("/v1/templates/spin", json=SPIN).status_code == 200
    assert other.post("/v1/templates/hello", json="Hello {{ name }}").status_code == 200
    assert other.post("/v1/bucket/name", json="B").status_code == 200
    assert other.get("/v1/templates/hello").text == "Hello B"

    def spin() -> None:
        answer = flood.get("/v1/templates/spin", timeout=60)
        assert answer.status_code in (422, 503), answer.text

    def hello() -> float:
        started = time.monotonic()
        answer = other.get("/v1/templates/hello", timeout=30)
        assert answer.text == "Hello B"
        return time.monotonic() - started

    samples = _while_running(spin, 6, hello, 60)
    assert len(samples) >= 3
    # Queued behind the flood, each render would wait a spin's render timeout (1.5 s) or
    # more; a busy machine may still stall one now and then, so the median is what tells.
    assert statistics.median(samples) < 0.75, samples
    assert max(samples) < 3.0, samples


def _peak_rss(pid: int) -> int:
    """The largest peak resident memory of ``pid`` and its descendants (the workers), bytes.

    A process or thread that ends during the walk is skipped: it is no longer holding memory.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            peak = max(
                (int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")),
                default=0,
            )
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                kids = children.read().split()
        except FileNotFoundError:
            continue
        for child in kids:
            peak = max(peak, _peak_rss(int(child)))
    return peak


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_concurrent_large_bodies_take_bounded_memory() -> None:
    body = json.dumps({f"key{i:07d}": i for i in range(KEYS)}).encode()  # about 6 MB
    with run_server(workers=1) as running:
        apis = [_api(running) for _ in range(BODIES)]
        with ThreadPoolExecutor(len(apis)) as pool:
            answers = list(
                pool.map(lambda api: api.post("/v1/bucket/", data=body, timeout=120), apis)
            )
        assert [answer.status_code for answer in answers] == [200] * len(apis)
        assert apis[-1].get(f"/v1/bucket/key{KEYS - 1:07d}").json() == KEYS - 1
        peak = _peak_rss(running.pid)
    assert 0 < peak < 25 * len(body) + 100 * 2**20, peak  # the old code took 60x


def test_overlong_lock_wait_is_not_a_500_for_reads_either(server: RunningServer) -> None:
    api = _api(server)
    assert api.post("/v1/bucket/kept", json=1).status_code == 200
    holder = sqlite3.connect(server.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert api.get("/v1/bucket/kept", timeout=30).json() == 1
        assert requests.get(server.url + "/openapi.json", timeout=30).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
