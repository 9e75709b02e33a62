"""``kvpio db copy``: every account, value and template moves, is verified, and is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path as FilePath

import pytest

from kvpio_mapping.server.storage import AccountExistsError, MemoryStorage, Storage
from kvpio_mapping.server.storage.copy import Tally, copy_storage
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
from kvpio_mapping.testing import Api, run_server

BIG = {"rows": [{"id": n, "name": f"row {n}", "tags": ["a", "b"]} for n in range(400)]}


def _fill(storage: Storage) -> None:
    storage.create_account("alice", "alice@example.com", "alice-key")
    storage.set("alice", ("doc",), BIG)
    storage.set("alice", ("n",), 3)
    storage.set_template("alice", "page", "{{ n }}")
    storage.set_template("alice", "about", "hi")
    storage.add_reads({"alice": 5})
    storage.create_account("bob", "bob@example.com", "bob-key")


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", "db", "copy", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_copy_carries_keys_values_templates_reads_and_revisions(
    tmp_path: FilePath, kind: str
) -> None:
    source: Storage = MemoryStorage() if kind == "memory" else SQLiteStorage(str(tmp_path / "s"))
    dest = SQLiteStorage(str(tmp_path / "d.sqlite3"))
    try:
        _fill(source)
        copied: list[int] = []
        tally = copy_storage(source, dest, progress=copied.append)
        assert copied == [1, 2]
        size = len(source.get_all("alice").encode()) + len(b"{}")
        assert tally == Tally(accounts=2, keys=2, templates=2, bytes=size)
        assert dest.account_records() == source.account_records()
        assert dest.authenticate("alice-key") == "alice"
        assert dest.get_all("alice") == source.get_all("alice")
        assert dest.list_templates("alice") == ["page", "about"]
        assert dest.revision("alice") == source.revision("alice") == 4
    finally:
        source.close()
        dest.close()


def test_copy_refuses_a_destination_holding_an_account_before_copying(
    tmp_path: FilePath,
) -> None:
    source, dest = MemoryStorage(), MemoryStorage()
    _fill(source)
    dest.create_account("carol", "", "bob-key")
    with pytest.raises(AccountExistsError, match="bob"):
        copy_storage(source, dest)
    assert [record.id for record in dest.account_records()] == ["carol"]


@pytest.mark.slow
def test_cli_copies_verifies_and_a_server_on_the_copy_serves_it(tmp_path: FilePath) -> None:
    source_db, dest_db = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    source = SQLiteStorage(str(source_db))
    _fill(source)
    source.close()
    answer = _run(str(source_db), str(dest_db))
    assert answer.returncode == 0, answer.stderr
    assert "2 accounts, 2 top-level keys, 2 templates" in answer.stdout
    with run_server(db=dest_db) as server:
        api = Api(server.url, "alice-key")
        assert api.get("/v1/bucket/doc/rows/400/name").json() == "row 399"
        assert api.get("/v1/templates/page").status_code == 200
    again = _run(str(source_db), str(dest_db))
    assert again.returncode == 1
    assert "already has the account(s) or key(s) of alice, bob" in again.stderr


def test_cli_refuses_a_missing_source_and_a_copy_onto_itself(tmp_path: FilePath) -> None:
    missing = _run(str(tmp_path / "none.sqlite3"), str(tmp_path / "d.sqlite3"))
    assert missing.returncode == 1
    assert "no database at" in missing.stderr
    assert not (tmp_path / "d.sqlite3").exists()
    same = _run(str(tmp_path / "a.sqlite3"), str(tmp_path / "a.sqlite3"))
    assert same.returncode == 2
    assert "the same database" in same.stderr
