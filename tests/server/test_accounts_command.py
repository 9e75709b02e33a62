"""`kvpio accounts list` and `kvpio accounts delete` for a person at a terminal and for a script.

The terminal is a real pseudo-terminal; the database a real SQLite file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from terminal_session import on_terminal

from kvpio_mapping.server.storage.sqlite import SQLiteStorage


@pytest.fixture
def db(tmp_path: Path) -> str:
    location = str(tmp_path / "kv.sqlite3")
    storage = SQLiteStorage(location)
    try:
        storage.create_account("ada", "ada@example.com", "k1")
        storage.create_account("bob-the-builder", "b@example.com", "k2")
    finally:
        storage.close()
    return location


def piped(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def accounts(db: str) -> list[str]:
    storage = SQLiteStorage(db)
    try:
        return [account.id for account in storage.list_accounts()]
    finally:
        storage.close()


def test_accounts_list_is_tab_separated_without_header_in_a_pipe(db: str) -> None:
    done = piped("accounts", "list", "--db", db)
    assert done.returncode == 0
    assert done.stdout == "ada\tada@example.com\t0\t2\nbob-the-builder\tb@example.com\t0\t2\n"


def test_accounts_list_is_aligned_under_a_header_on_a_terminal(db: str) -> None:
    code, shown = on_terminal("accounts", "list", "--db", db)
    assert code == 0
    assert shown == (
        "ID               EMAIL            READS  SIZE\n"
        "ada              ada@example.com  0      2\n"
        "bob-the-builder  b@example.com    0      2\n"
    )


def test_accounts_delete_in_a_script_needs_yes(db: str) -> None:
    done = piped("accounts", "delete", "ada", "--db", db)
    assert done.returncode == 2
    assert done.stderr == (
        "kvpio accounts delete: not on a terminal, so nobody can confirm: pass --yes\n"
    )
    assert accounts(db) == ["ada", "bob-the-builder"]
    assert piped("accounts", "delete", "ada", "--yes", "--db", db).returncode == 0
    assert accounts(db) == ["bob-the-builder"]


def test_accounts_delete_on_a_terminal_asks_first(db: str) -> None:
    code, shown = on_terminal("accounts", "delete", "ada", "--db", db, answer="n")
    assert code == 2
    assert "Delete the account 'ada' and all its data? [y/N] " in shown
    assert shown.endswith("kvpio accounts delete: not confirmed; nothing changed\n")
    assert accounts(db) == ["ada", "bob-the-builder"]
    code, shown = on_terminal("accounts", "delete", "ada", "--db", db, answer="y")
    assert code == 0
    assert accounts(db) == ["bob-the-builder"]


def test_accounts_delete_of_no_such_account_asks_nothing(db: str) -> None:
    done = piped("accounts", "delete", "nobody", "--db", db)
    assert (done.returncode, done.stderr) == (1, "kvpio accounts delete: no account 'nobody'\n")
