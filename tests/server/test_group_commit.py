"""Group commit: concurrent writes share transactions, and each keeps its own outcome.

Each test runs real ``kvpio serve`` processes on loopback, written to at once
by several client processes of a few threads each (the last, the writers'
turn between processes, against real processes holding it); every loop is
bounded in count and in time.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
import requests

from kvpio_mapping.server.storage import StorageBusyError, open_storage
from kvpio_mapping.server.storage.sqlite import _WriterTurn
from kvpio_mapping.testing import RunningServer, new_account, run_server, start_server

pytestmark = pytest.mark.slow

PROCESSES = 4
THREADS = 4
WRITES = 25
"""Writes per thread: 4 processes x 4 threads x 25 = 400 writes, 16 at a time."""

Outcome = tuple[str, int, int, int]
"""(key, value, status, revision) of one answered write."""


def _thread_writes(url: str, key: str, name: str, mixed: bool) -> list[Outcome]:
    """``WRITES`` writes of top-level keys; with ``mixed``, two in three are refused.

    The refused ones: an ``If-Match`` that cannot match (412), an increment of
    a string (409), a write below a list past its end (400).
    """
    session = requests.Session()
    session.auth = (key, "")
    outcomes = []
    for n in range(WRITES):
        kind = n % 3 if mixed else 0
        path, headers, params = f"{name}-{n}", {}, {}
        if kind == 1:
            headers = {"If-Match": '"no-such-etag"'}
        elif kind == 2:
            path, params = "text", {"op": "increment"}
        if mixed and n % 6 == 5:
            path, params = "list/9", {}
        answer = session.post(
            f"{url}/v1/bucket/{path}", json=n, headers=headers, params=params, timeout=60
        )
        outcomes.append((path, n, answer.status_code, int(answer.headers.get("Kvpio-Revision", 0))))
    return outcomes


def _process_writes(url: str, key: str, writer: int, mixed: bool) -> list[Outcome]:
    """In a process of its own: ``THREADS`` threads writing at once."""
    with ThreadPoolExecutor(THREADS) as threads:
        names = [f"w{writer}-{thread}" for thread in range(THREADS)]
        done = threads.map(lambda name: _thread_writes(url, key, name, mixed), names)
        return [outcome for outcomes in done for outcome in outcomes]


def _write_at_once(url: str, key: str, mixed: bool = False) -> list[Outcome]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as processes:
        futures = [
            processes.submit(_process_writes, url, key, writer, mixed)
            for writer in range(PROCESSES)
        ]
        return [outcome for future in futures for outcome in future.result(timeout=120)]


def _metric(server: RunningServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


def _grouped(server: RunningServer, writes: int) -> tuple[float, float]:
    """(commits, transactions) the workers report once their samples cover ``writes``."""
    deadline = time.monotonic() + 15
    while _metric(server, "kvpio_commits_total") < writes and time.monotonic() < deadline:
        time.sleep(0.2)
    return _metric(server, "kvpio_commits_total"), _metric(server, "kvpio_commit_groups_total")


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with run_server(workers=request.param) as running:
        yield running


def _logged(
    server: RunningServer, account: str
) -> dict[int, list[tuple[str, tuple[str, ...], str | None]]]:
    """The account's change log, by revision: (kind, path, text) of each change."""
    storage = open_storage(server.db)
    try:
        changes = storage.changes(account, 0, limit=10_000)
    finally:
        storage.close()
    logged: dict[int, list[tuple[str, tuple[str, ...], str | None]]] = {}
    for change in changes.changes:
        logged.setdefault(change.revision, []).append((change.kind, change.path, change.text))
    return logged


def test_concurrent_writes_each_get_their_own_gap_free_revision(server: RunningServer) -> None:
    account = new_account(server)
    outcomes = _write_at_once(account.url, account.api_key)
    assert {status for _, _, status, _ in outcomes} == {200}
    revisions = sorted(revision for *_, revision in outcomes)
    assert revisions == list(range(1, len(outcomes) + 1))
    whole = requests.get(
        account.url + "/v1/bucket/?values=true", auth=(account.api_key, ""), timeout=30
    ).json()
    assert whole == {key: value for key, value, _, _ in outcomes}
    logged = _logged(server, account.id)
    assert logged == {
        revision: [("put", (key,), str(value))] for key, value, _, revision in outcomes
    }
    commits, groups = _grouped(server, len(outcomes))
    assert commits >= len(outcomes)
    assert groups < commits  # some transactions held several writes


def test_a_refused_write_leaves_its_group_neighbours_committed(server: RunningServer) -> None:
    account = new_account(server)
    api = requests.Session()
    api.auth = (account.api_key, "")
    assert api.post(account.url + "/v1/bucket/text", json="a string").status_code == 200
    assert api.post(account.url + "/v1/bucket/list", json=[0]).status_code == 200
    outcomes = _write_at_once(account.url, account.api_key, mixed=True)
    accepted = [outcome for outcome in outcomes if outcome[2] == 200]
    refused = [outcome for outcome in outcomes if outcome[2] != 200]
    assert {status for _, _, status, _ in refused} == {400, 409, 412}
    assert all("-" in path for path, *_ in accepted)
    assert len(accepted) == len(range(0, WRITES, 3)) * PROCESSES * THREADS
    revisions = sorted(revision for *_, revision in accepted)
    assert revisions == list(range(3, len(accepted) + 3))  # 1 and 2 were the set-up's
    whole = api.get(account.url + "/v1/bucket/?values=true", timeout=30).json()
    assert whole == {
        "text": "a string",
        "list": [0],
        **{key: value for key, value, _, _ in accepted},
    }
    logged = _logged(server, account.id)
    assert sorted(logged) == [1, 2, *revisions]
    commits, groups = _grouped(server, len(outcomes))
    assert groups < commits


def _write_until_gone(url: str, key: str, writer: int) -> list[str]:
    """Write keys until the server is gone; the keys whose writes were acknowledged."""
    session = requests.Session()
    session.auth = (key, "")
    acknowledged = []
    for n in range(5_000):
        try:
            answer = session.post(f"{url}/v1/bucket/k{writer}-{n}", json=n, timeout=10)
        except requests.ConnectionError:
            break
        if answer.status_code == 200:
            acknowledged.append(f"k{writer}-{n}")
    return acknowledged


def test_every_acknowledged_grouped_write_survives_kill_9(tmp_path: object) -> None:
    db = f"{tmp_path}/kvpio.sqlite3"
    server = start_server(db, workers=2)
    try:
        with ThreadPoolExecutor(16) as writers:
            futures = [
                writers.submit(_write_until_gone, server.url, server.api_key, writer)
                for writer in range(16)
            ]
            deadline = time.monotonic() + 20
            while _metric(server, "kvpio_commits_total") < 300 and time.monotonic() < deadline:
                time.sleep(0.1)
            server.kill()
            acknowledged = [key for future in futures for key in future.result(timeout=60)]
    finally:
        server.kill()
        server.cleanup()
    assert len(acknowledged) >= 200  # the count above is taken as groups begin
    with run_server(db=db, api_key=server.api_key) as again:
        stored = requests.get(
            f"{again.url}/v1/bucket/", auth=(server.api_key, ""), timeout=30
        ).json()
    assert set(acknowledged) <= set(stored)


_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if sys.argv[2] == "try" else 0))
print("held", flush=True)
sys.stdin.readline()
"""


def _hold(path: str, how: str = "wait") -> subprocess.Popen[str]:
    """A process holding the writer's turn of ``path`` until its stdin gets a line."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, path, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert holder.stdout is not None
    holder.stdout.readline()
    return holder


def _let_go(holder: subprocess.Popen[str]) -> int:
    holder.communicate("\n", timeout=30)
    return holder.returncode


def test_a_writer_turn_waited_for_too_long_is_busy_and_let_go_when_it_comes(
    tmp_path: object,
) -> None:
    path = f"{tmp_path}/db-writer"
    turn = _WriterTurn(path)
    holder = _hold(path)
    with pytest.raises(StorageBusyError), turn.held(0.2):
        pass
    assert _let_go(holder) == 0
    # The turn the writer gave up on comes now and is let go at once: others can take it.
    deadline = time.monotonic() + 20
    while True:
        taker = subprocess.run(
            [sys.executable, "-c", _HOLD, path, "try"],
            input="\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        if taker.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert taker.returncode == 0
    with turn.held(10):
        pass
    turn.close()


def test_a_child_forked_while_a_thread_holds_the_turn_gets_its_own(tmp_path: object) -> None:
    turn = _WriterTurn(f"{tmp_path}/db-writer")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with turn.held(10):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            with turn.held(20):
                code = 0
        finally:
            os._exit(code)
    release.set()
    holder.join(30)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    turn.close()
