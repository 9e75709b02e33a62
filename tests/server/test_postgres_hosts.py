"""Several ``kvpio serve`` hosts on one PostgreSQL database, and the commands on its URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path as FilePath

import pytest

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


@pytest.mark.slow
def test_a_killed_host_loses_no_acknowledged_write(kvpio_postgres_db: str) -> None:
    key = "shared-key"
    with run_server(db=kvpio_postgres_db, api_key=key) as survivor:
        with run_server(db=kvpio_postgres_db, api_key=key) as doomed:
            api = Api(doomed.url, key)
            for n in range(20):
                assert api.post(f"/v1/bucket/k{n}", json=n).status_code < 300
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(10)
        api = Api(survivor.url, key)
        assert [api.get(f"/v1/bucket/k{n}").json() for n in range(20)] == list(range(20))
        assert api.post("/v1/bucket/after", json=1).status_code < 300


def _wait_for(api: Api, path: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    status = 0
    while time.monotonic() < deadline:
        status = api.get(path).status_code
        if status == 200:
            return status
        time.sleep(0.1)
    return status


@pytest.mark.slow
def test_a_postgresql_restart_answers_503_then_recovers() -> None:
    postgres: RunningPostgres = start_postgres()
    try:
        url = postgres.create_database()
        with run_server(db=url, api_key="k") as server:
            api = Api(server.url, "k")
            assert api.post("/v1/bucket/n", json=1).status_code < 300
            postgres.stop("immediate")
            down = api.post("/v1/bucket/n?op=increment", json=1)
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "1"
            postgres.start()
            assert _wait_for(api, "/v1/bucket/n", 30) == 200
            assert api.get("/v1/bucket/n").json() == 1
            assert api.post("/v1/bucket/n?op=increment", json=1).json() == 2
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
