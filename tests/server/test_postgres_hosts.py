"""Several ``kvpio serve`` hosts on one PostgreSQL database, and the commands on its URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path as FilePath

import pytest
import requests

from kvpio_mapping.server.storage.postgres import PostgresStorage
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
from kvpio_mapping.testing import Api, RunningPostgres, run_server, start_postgres

DOC = {"rows": [{"id": n, "name": f"row {n}"} for n in range(300)], "n": 1}


def _kvpio(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_accounts_and_db_commands_take_the_url(kvpio_postgres_db: str, tmp_path: FilePath) -> None:
    made = _kvpio("accounts", "create", "--db", kvpio_postgres_db, "--id", "ada", "--email", "a@x")
    assert made.returncode == 0, made.stderr
    listed = _kvpio("accounts", "list", "--db", kvpio_postgres_db)
    assert listed.returncode == 0 and "ada" in listed.stdout
    checked = _kvpio("db", "check", "--db", kvpio_postgres_db)
    assert checked.returncode == 0, checked.stderr
    backup = _kvpio("db", "backup", str(tmp_path / "b.sqlite3"), "--db", kvpio_postgres_db)
    assert backup.returncode == 1 and "pg_dump" in backup.stderr
    with run_server(db=kvpio_postgres_db, api_key=made.stdout.strip()) as server:
        api = Api(server.url, server.api_key)
        assert api.post("/v1/bucket/doc", json=DOC).status_code < 300
        assert api.get("/v1/bucket/doc/rows/3/name").json() == "row 2"


def test_db_copy_from_sqlite_to_postgresql_and_back(
    kvpio_postgres_db: str, tmp_path: FilePath
) -> None:
    source = SQLiteStorage(str(tmp_path / "a.sqlite3"))
    source.create_account("alice", "alice@example.com", "alice-key")
    source.set("alice", ("doc",), DOC)
    source.set_template("alice", "page", "{{ doc.n }}")
    source.close()
    there = _kvpio("db", "copy", str(tmp_path / "a.sqlite3"), kvpio_postgres_db)
    assert there.returncode == 0, there.stderr
    assert "1 accounts" in there.stdout and "1 templates" in there.stdout
    back = _kvpio("db", "copy", kvpio_postgres_db, str(tmp_path / "b.sqlite3"))
    assert back.returncode == 0, back.stderr
    copied = SQLiteStorage(str(tmp_path / "b.sqlite3"))
    try:
        assert copied.authenticate("alice-key") == "alice"
        assert copied.get_template("alice", "page") == "{{ doc.n }}"
        doc = copied.get("alice", ("doc",))
        assert doc is not None and json.loads(doc) == DOC
    finally:
        copied.close()


def test_three_hosts_share_one_database(kvpio_postgres_db: str) -> None:
    """Increments through three hosts at once: every one counted, each host sees the rest."""
    key = "shared-key"
    with (
        run_server(db=kvpio_postgres_db, api_key=key, workers=2) as first,
        run_server(db=kvpio_postgres_db, api_key=key) as second,
        run_server(db=kvpio_postgres_db, api_key=key) as third,
    ):
        apis = [Api(host.url, key) for host in (first, second, third)]
        assert apis[0].post("/v1/bucket/doc", json=DOC).status_code < 300

        def bump(index: int) -> int:
            api = apis[index % 3]
            return api.post("/v1/bucket/doc/n?op=increment", json=1).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(bump, range(60)))
        assert statuses == [200] * 60
        for api in apis:
            assert api.get("/v1/bucket/doc/n").json() == 61
            assert api.get("/v1/bucket/doc/rows/300/id").json() == 299


class _Writer(threading.Thread):
    """Commits pairs ``a{n}``, ``b{n}`` through one host until stopped (bounded in count and time).

    Records the ``n`` of every acknowledged commit and the status of every answer.
    """

    def __init__(self, api: Api, limit: int = 5000, seconds: float = 60) -> None:
        super().__init__(daemon=True)
        self.api, self.limit, self.seconds = api, limit, seconds
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.statuses: set[int] = set()

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        for n in range(self.limit):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            pair = [{"op": "set", "path": f"{name}{n}", "value": n} for name in "ab"]
            try:
                answer = self.api.post(
                    "/v1/bucket/?commit=true", json={"operations": pair}, timeout=10
                )
            except requests.RequestException:
                time.sleep(0.01)
                continue
            self.statuses.add(answer.status_code)
            if answer.status_code == 200:
                self.acknowledged.append(n)

    def wait_for(self, count: int, seconds: float = 30) -> None:
        """Return once ``count`` more commits are acknowledged (or fail after ``seconds``)."""
        target = len(self.acknowledged) + count
        deadline = time.monotonic() + seconds
        while len(self.acknowledged) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.acknowledged) >= target, self.statuses

    def finish(self) -> None:
        self.stop.set()
        self.join(30)


def _all_or_nothing(api: Api, writer: _Writer) -> None:
    """Every acknowledged pair is stored; every other pair is whole or absent."""
    bucket = api.get("/v1/bucket/", params={"values": "true"}).json()
    for n in writer.acknowledged:
        assert bucket.get(f"a{n}") == n and bucket.get(f"b{n}") == n
    for n in range(max(writer.acknowledged) + 2):
        assert (f"a{n}" in bucket) == (f"b{n}" in bucket)


@pytest.mark.slow
def test_a_host_killed_mid_load_loses_no_acknowledged_write(kvpio_postgres_db: str) -> None:
    key = "shared-key"
    with run_server(db=kvpio_postgres_db, api_key=key) as survivor:
        with run_server(db=kvpio_postgres_db, api_key=key) as doomed:
            writer = _Writer(Api(doomed.url, key))
            writer.start()
            writer.wait_for(30)
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(10)
            writer.finish()
        api = Api(survivor.url, key)
        _all_or_nothing(api, writer)
        assert api.post("/v1/bucket/after", json=1).status_code < 300


@pytest.mark.slow
def test_a_postgresql_restart_mid_load_answers_503_and_loses_nothing() -> None:
    postgres: RunningPostgres = start_postgres()
    try:
        url = postgres.create_database()
        with run_server(db=url, api_key="k") as server:
            api = Api(server.url, "k")
            writer = _Writer(api)
            writer.start()
            writer.wait_for(30)
            postgres.stop("immediate")
            down = api.post("/v1/bucket/n?op=increment", json=1, timeout=10)
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "1"
            postgres.start()
            writer.wait_for(30)
            writer.finish()
            assert writer.statuses <= {200, 503}
            _all_or_nothing(api, writer)
    finally:
        postgres.destroy()


def test_cached_reads_follow_writes_made_through_another_storage(kvpio_postgres_db: str) -> None:
    here, there = PostgresStorage(kvpio_postgres_db), PostgresStorage(kvpio_postgres_db)
    try:
        here.create_account("alice", "", "alice-key")
        here.set("alice", ("x",), 1)
        assert here.read("alice", ("x",)) == ("1", 1)
        assert here.read("alice", ("x",)) == ("1", 1)
        assert here.read_cache_hits == 1
        there.set("alice", ("x",), 2)
        assert here.read("alice", ("x",)) == ("2", 2)
        # Made again under the same id, the account counts revisions from 0 again.
        there.delete_account("alice")
        there.create_account("alice", "", "alice-key")
        there.set("alice", ("y",), 0)
        there.set("alice", ("x",), 3)
        assert here.read("alice", ("x",)) == ("3", 2)
    finally:
        here.close()
        there.close()
