"""Schema versions: a database is upgraded in place, and one newer than the code is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path as FilePath
from typing import Any

import pytest

from kvpio_mapping.server.storage.base import UncountableError
from kvpio_mapping.server.storage.schema import SchemaTooNewError, migrate
from kvpio_mapping.server.storage.sqlite import MIGRATIONS, SQLiteStorage

# A bucket whose containers are stored every way at a small blob threshold: blobs,
# split objects and lists, runs of members and items.
BUCKET: dict[str, Any] = {
    "flat": {f"k{i}": i for i in range(300)},
    "list": [[i] * (i % 5) for i in range(200)],
    "doc": {"users": {f"u{i}": {"tags": ["a", "b"], "n": i} for i in range(50)}},
    "small": {"a": [1, 2]},
    "n": 7,
}
COUNTS = {
    (): 5,
    ("flat",): 300,
    ("list",): 200,
    ("list", "7"): 1,
    ("doc", "users"): 50,
    ("doc", "users", "u9", "tags"): 2,
    ("small",): 1,
    ("small", "a"): 2,
    ("missing",): None,
}


def _written_by_version_1(db: FilePath) -> None:
    """A database as schema version 1 wrote it: this layout, without the counts."""
    storage = SQLiteStorage(str(db), blob_threshold=64)
    storage.create_account("a", "", "key")
    storage.create_account("empty", "", "other")
    storage.set_many("a", [((key,), value) for key, value in BUCKET.items()])
    storage.close()
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE nodes DROP COLUMN children")
        conn.execute("ALTER TABLE accounts DROP COLUMN children")
        conn.execute("UPDATE kvpio_schema SET version = 1")
    conn.close()


def test_version_1_database_gains_exact_counts(tmp_path: FilePath) -> None:
    db = tmp_path / "v1.sqlite3"
    _written_by_version_1(db)
    storage = SQLiteStorage(str(db), blob_threshold=64)
    try:
        for path, count in COUNTS.items():
            assert storage.count("a", path)[0] == count, path
        assert storage.count("empty") == (0, 0)
        with pytest.raises(UncountableError):
            storage.count("a", ("n",))
        storage.delete("a", ("flat", "k3"))
        storage.set("a", ("added",), 1)
        assert storage.count("a", ("flat",))[0] == 299
        assert storage.count("a")[0] == 6
    finally:
        storage.close()
    assert _version(db) == len(MIGRATIONS)


def test_database_of_release_0_1_with_values_gains_counts(tmp_path: FilePath) -> None:
    db = tmp_path / "old.sqlite3"
    _written_by_version_1(db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE kvpio_schema")
        conn.execute("DROP TABLE changes")
        conn.execute("ALTER TABLE accounts DROP COLUMN log_start")
        conn.execute("ALTER TABLE accounts DROP COLUMN revision")
    conn.close()
    storage = SQLiteStorage(str(db), blob_threshold=64)
    try:
        for path, count in COUNTS.items():
            assert storage.count("a", path) == (count, 0), path
    finally:
        storage.close()
    assert _version(db) == len(MIGRATIONS)


def _version(db: FilePath) -> int:
    with sqlite3.connect(db) as conn:
        version = int(conn.execute("SELECT version FROM kvpio_schema").fetchone()[0])
    conn.close()
    return version


def _add_notes(conn: sqlite3.Connection) -> None:
    """A next release's migration: a new column with a default."""
    conn.execute("ALTER TABLE accounts ADD COLUMN notes TEXT NOT NULL DEFAULT ''")


def _with_next_release(db: FilePath) -> int:
    """Open ``db`` as the next release would (one migration more); the version it had."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        had = migrate(conn, (*MIGRATIONS, _add_notes), "SQLite")
        conn.execute("COMMIT")
    conn.close()
    return had


def test_new_sqlite_database_records_the_codes_version(tmp_path: FilePath) -> None:
    db = tmp_path / "new.sqlite3"
    SQLiteStorage(str(db)).close()
    assert _version(db) == len(MIGRATIONS)


def test_reopening_keeps_data_and_version(tmp_path: FilePath) -> None:
    db = tmp_path / "db.sqlite3"
    storage = SQLiteStorage(str(db))
    storage.create_account("a", "", "key")
    storage.set("a", ("k",), [1, 2])
    storage.close()
    storage = SQLiteStorage(str(db))
    try:
        assert storage.get("a", ("k",)) == "[1,2]"
        assert storage.revision("a") == 1
    finally:
        storage.close()
    assert _version(db) == len(MIGRATIONS)


def test_database_of_release_0_1_gets_a_version(tmp_path: FilePath) -> None:
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, email TEXT NOT NULL,"
            " key_digest TEXT NOT NULL UNIQUE, reads INTEGER NOT NULL DEFAULT 0)"
        )
    conn.close()
    SQLiteStorage(str(db)).close()
    assert _version(db) == len(MIGRATIONS)


def test_next_release_upgrades_this_ones_database_in_place(tmp_path: FilePath) -> None:
    db = tmp_path / "db.sqlite3"
    storage = SQLiteStorage(str(db))
    storage.create_account("a", "a@example.invalid", "key")
    storage.set("a", ("k",), "v")
    storage.close()
    assert _with_next_release(db) == len(MIGRATIONS)
    assert _version(db) == len(MIGRATIONS) + 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, notes FROM accounts").fetchall() == [("a", "")]
    conn.close()
    assert _with_next_release(db) == len(MIGRATIONS) + 1


def test_database_newer_than_the_code_is_refused_unchanged(tmp_path: FilePath) -> None:
    db = tmp_path / "db.sqlite3"
    SQLiteStorage(str(db)).close()
    _with_next_release(db)
    known = len(MIGRATIONS)
    with pytest.raises(
        SchemaTooNewError, match=rf"version {known + 1}, newer .* knows \({known}\)"
    ):
        SQLiteStorage(str(db))
    assert _version(db) == len(MIGRATIONS) + 1


def test_failed_migration_leaves_the_version_it_had(tmp_path: FilePath) -> None:
    db = tmp_path / "db.sqlite3"
    SQLiteStorage(str(db)).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE accounts ADD COLUMN half TEXT")
        raise RuntimeError("migration failed halfway")

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(RuntimeError, match="halfway"):
        migrate(conn, (*MIGRATIONS, broken), "SQLite")
    conn.execute("ROLLBACK")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
    conn.close()
    assert "half" not in columns
    assert _version(db) == len(MIGRATIONS)


@pytest.mark.parametrize(
    "command",
    [["serve", "--port", "0"], ["accounts", "list"]],
    ids=["serve", "accounts"],
)
def test_commands_refuse_a_newer_database_saying_why(
    tmp_path: FilePath, command: list[str]
) -> None:
    db = tmp_path / "db.sqlite3"
    SQLiteStorage(str(db)).close()
    _with_next_release(db)
    answer = subprocess.run(
        [sys.executable, "-m", "kvpio_mapping.server", *command, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 1
    assert "newer than this kvpio-mapping knows" in answer.stderr
    assert "Traceback" not in answer.stderr
