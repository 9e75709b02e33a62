"""PostgreSQL connections and transactions, against a real server: schema, snapshots,
conflicts run again a bounded number of times, an outage is a clear retryable error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from kvpio_mapping import testing
from kvpio_mapping.server.storage.base import StorageUnavailableError
from kvpio_mapping.server.storage.postgres import (
    MAX_ATTEMPTS,
    MIGRATIONS,
    Database,
    PostgresStorage,
)
from kvpio_mapping.server.storage.schema import SchemaTooNewError

_OPEN = "from kvpio_mapping.server.storage.postgres import Database; Database(sys.argv[1]).close()"


def _version(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, version FROM kvpio_schema").fetchall()


def test_new_database_gets_the_tables_and_the_codes_version(kvpio_postgres_db: str) -> None:
    Database(kvpio_postgres_db).close()
    assert _version(kvpio_postgres_db) == [(1, len(MIGRATIONS))]
    with psycopg.connect(kvpio_postgres_db) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' ORDER BY table_name"
        ).fetchall()
    assert [name for (name,) in tables] == [
        "accounts",
        "changes",
        "kvpio_schema",
        "members",
        "nodes",
        "templates",
    ]
    Database(kvpio_postgres_db).close()
    assert _version(kvpio_postgres_db) == [(1, len(MIGRATIONS))]


def test_processes_opening_a_new_database_at_once_upgrade_it_once(
    kvpio_postgres_db: str,
) -> None:
    command = [sys.executable, "-c", "import sys; " + _OPEN, kvpio_postgres_db]
    children = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert _version(kvpio_postgres_db) == [(1, len(MIGRATIONS))]


def test_database_newer_than_the_code_is_refused(kvpio_postgres_db: str) -> None:
    Database(kvpio_postgres_db).close()
    with psycopg.connect(kvpio_postgres_db) as conn:
        conn.execute("UPDATE kvpio_schema SET version = 99")
    with pytest.raises(SchemaTooNewError, match="PostgreSQL database has schema version 99"):
        Database(kvpio_postgres_db)


def test_a_read_sees_one_snapshot(kvpio_postgres_db: str) -> None:
    db = Database(kvpio_postgres_db)
    try:
        db.transaction(lambda conn: conn.execute("CREATE TABLE t (n int)"), write=True)
        db.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (1)"), write=True)

        def read_twice(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
            first = conn.execute("SELECT sum(n) FROM t").fetchone()
            with psycopg.connect(kvpio_postgres_db, autocommit=True) as other:
                other.execute("INSERT INTO t VALUES (10)")
            second = conn.execute("SELECT sum(n) FROM t").fetchone()
            return (first, second)

        assert db.transaction(read_twice, write=False) == ((1,), (1,))
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (2)"), write=False)
    finally:
        db.close()


def test_a_deadlock_runs_the_losing_transaction_again(kvpio_postgres_db: str) -> None:
    db = Database(kvpio_postgres_db)
    try:
        db.transaction(
            lambda conn: conn.execute("CREATE TABLE t AS SELECT 1 AS id, 0 AS n UNION SELECT 2, 0"),
            write=True,
        )
        both_locked = threading.Barrier(2, timeout=30)
        runs = {1: 0, 2: 0}

        def writer(first: int, second: int) -> None:
            def work(conn: psycopg.Connection[Any]) -> None:
                runs[first] += 1
                conn.execute("SET LOCAL deadlock_timeout = '50ms'")
                conn.execute("UPDATE t SET n = n + 1 WHERE id = %s", (first,))
                if runs[first] == 1:
                    both_locked.wait()
                conn.execute("UPDATE t SET n = n + 1 WHERE id = %s", (second,))

            db.transaction(work, write=True)

        threads = [threading.Thread(target=writer, args=pair) for pair in ((1, 2), (2, 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(runs.values()) == [1, 2]
        total = db.transaction(
            lambda conn: conn.execute("SELECT sum(n) FROM t").fetchone(), write=False
        )
        assert total == (4,)
    finally:
        db.close()


def test_conflicts_are_run_again_a_bounded_number_of_times(kvpio_postgres_db: str) -> None:
    db = Database(kvpio_postgres_db)
    runs = 0

    def always_conflicting(conn: psycopg.Connection[Any]) -> None:
        nonlocal runs
        runs += 1
        conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
        )

    try:
        with pytest.raises(psycopg.errors.SerializationFailure):
            db.transaction(always_conflicting, write=True)
    finally:
        db.close()
    assert runs == MAX_ATTEMPTS


def test_an_unreachable_server_is_a_storage_unavailable_error(closed_url: str) -> None:
    port = closed_url.rsplit(":", 1)[1]
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="cannot connect"):
        Database(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=0.5)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_an_outage_fails_clearly_and_a_restart_is_picked_up() -> None:
    server = testing.start_postgres()
    try:
        db = Database(server.create_database(), timeout=1.0)
        try:
            db.transaction(lambda conn: conn.execute("CREATE TABLE t (n int)"), write=True)
            server.stop("immediate")
            with pytest.raises(StorageUnavailableError, match="unavailable"):
                db.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (1)"), write=True)
            server.start()
            deadline = time.monotonic() + 20
            while True:
                # The pool reconnects in the background, with backoff, as a client retries.
                try:
                    db.transaction(
                        lambda conn: conn.execute("INSERT INTO t VALUES (2)"), write=True
                    )
                    break
                except StorageUnavailableError:
                    assert time.monotonic() < deadline, "the restart was not picked up in 20 s"
            rows = db.transaction(
                lambda conn: conn.execute("SELECT n FROM t").fetchall(), write=False
            )
            assert rows == [(2,)]
        finally:
            db.close()
    finally:
        server.destroy()


def test_version_1_database_gains_exact_counts(kvpio_postgres_db: str) -> None:
    bucket: dict[str, Any] = {
        "flat": {f"k{i}": i for i in range(300)},
        "list": [[i] * (i % 5) for i in range(200)],
        "small": {"a": [1, 2]},
    }
    storage = PostgresStorage(kvpio_postgres_db, blob_threshold=64)
    storage.create_account("a", "", "key")
    storage.set_many("a", [((key,), value) for key, value in bucket.items()])
    storage.close()
    with psycopg.connect(kvpio_postgres_db) as conn:
        conn.execute("ALTER TABLE nodes DROP COLUMN children")
        conn.execute("ALTER TABLE accounts DROP COLUMN children")
        conn.execute("UPDATE kvpio_schema SET version = 1")
    storage = PostgresStorage(kvpio_postgres_db, blob_threshold=64)
    try:
        counts = {(): 3, ("flat",): 300, ("list",): 200, ("list", "8"): 2, ("small", "a"): 2}
        for path, count in counts.items():
            assert storage.count("a", path) == (count, 1), path
    finally:
        storage.close()
    assert _version(kvpio_postgres_db) == [(1, len(MIGRATIONS))]


def _compression(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'nodes'::regclass AND attname = 'body'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_values_compress_with_lz4_from_version_3_on(kvpio_postgres_db: str) -> None:
    storage = PostgresStorage(kvpio_postgres_db)
    storage.create_account("a", "", "key")
    document = {"text": "lorem ipsum " * 100_000}
    storage.set("a", ("doc",), document)
    storage.close()
    assert _compression(kvpio_postgres_db) == "l"
    with psycopg.connect(kvpio_postgres_db) as conn:
        stored = conn.execute(
            "SELECT pg_column_compression(body) FROM nodes WHERE octet_length(body) > 100000"
        ).fetchall()
        assert stored == [("lz4",)]
        # A version 2 database (pglz) is upgraded in place, its stored values kept.
        conn.execute("ALTER TABLE nodes ALTER COLUMN body SET COMPRESSION pglz")
        conn.execute("UPDATE kvpio_schema SET version = 2")
    storage = PostgresStorage(kvpio_postgres_db)
    try:
        assert json.loads(storage.get("a", ("doc",)) or "null") == document
    finally:
        storage.close()
    assert _compression(kvpio_postgres_db) == "l"
    assert _version(kvpio_postgres_db) == [(1, len(MIGRATIONS))]
