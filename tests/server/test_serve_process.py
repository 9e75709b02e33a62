"""`kvpio serve` as an operator runs it: one server per port, crashed workers
replaced, a damaged or mistyped database refused with one line, no side effects.

Every case runs real ``kvpio serve`` processes on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from kvpio_mapping.server.serve import STOP_GRACE
from kvpio_mapping.server.storage import open_storage
from kvpio_mapping.testing import RunningServer, run_server, start_server

pytestmark = pytest.mark.slow


def kvpio(*argv: str, home: Path, timeout: float = 20) -> tuple[int, str, str]:
    """``python -m kvpio_mapping ARGV`` with ``$HOME`` and the XDG data home in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVPIO_", "XDG_"))}
    env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", *argv],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def workers_of(server: RunningServer) -> list[int]:
    """The pids of the server's worker processes (its spawned children)."""
    pids = []
    for task in Path(f"/proc/{server.pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended since the listing
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:  # a child reaped since the listing
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(child))
    return pids


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (IPv4, loopback tests)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for fields in (line.split() for line in lines)
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port
    )


def replacement(server: RunningServer, known: set[int]) -> int:
    """The pid of the one worker not in ``known``, once it has started."""
    new: set[int] = set()

    def started() -> bool:
        new.clear()
        new.update(set(workers_of(server)) - known)
        return len(new) == 1

    wait_for(started, 10, "a replacement worker")
    return new.pop()


def get(server: RunningServer, path: str) -> requests.Response:
    """One request on a fresh connection (so each one may land on any worker)."""
    return requests.get(server.url + path, auth=(server.api_key, ""), timeout=10)


# defect 1: one server per port


def test_second_server_on_a_port_fails_and_the_first_keeps_all_traffic(tmp_path: Path) -> None:
    with run_server(db=tmp_path / "a.sqlite3", workers=2) as first:
        requests.post(first.url + "/v1/bucket/k", json="a", auth=(first.api_key, ""), timeout=10)
        port = urlsplit(first.url).port
        with pytest.raises(RuntimeError) as refused:
            second = start_server(tmp_path / "b.sqlite3", workers=2, port=port, timeout=15)
            second.stop()
        assert "exited with code 1" in str(refused.value)
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in str(refused.value)
        answers = [get(first, "/v1/bucket/k") for _ in range(40)]
        assert [(r.status_code, r.text) for r in answers] == [(200, '"a"')] * 40


def test_of_two_servers_started_at_once_on_a_port_one_serves(tmp_path: Path) -> None:
    """Also while the first one's workers are still starting (so nothing listens yet)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "kvpio_mapping.server", "serve", f"--port={port}"]
    processes = [
        subprocess.Popen(
            [*command, f"--db={tmp_path / name}", "--workers=2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for name in ("a.sqlite3", "b.sqlite3")
    ]
    try:
        wait_for(lambda: any(p.poll() is not None for p in processes), 20, "one to exit")
        time.sleep(1)
        exited = [p for p in processes if p.poll() is not None]
        assert len(exited) == 1
        assert exited[0].returncode == 1
        assert exited[0].communicate()[1] == (
            f"kvpio serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.communicate(timeout=15)


# defect 2: crashed workers are replaced with backoff


def test_workers_killed_again_and_again_are_replaced_while_the_other_serves(
    tmp_path: Path,
) -> None:
    with run_server(db=tmp_path / "kv.sqlite3", workers=2) as server:
        port = urlsplit(server.url).port
        assert port is not None
        wait_for(lambda: len(workers_of(server)) == 2, 10, "two workers")
        survivor, victim = workers_of(server)
        wait_for(lambda: listeners(port) == 2, 10, "both workers to listen")
        killed = 0
        deadline = time.monotonic() + 20
        while killed < 6 and time.monotonic() < deadline:
            os.kill(victim, signal.SIGKILL)
            killed += 1
            # Its socket closes once its last thread is gone; the survivor's is then the only one.
            wait_for(lambda: listeners(port) == 1, 5, "the killed worker's socket to close")
            # Kill each replacement as soon as it shows up, well within a second of its start.
            assert [get(server, "/v1/bucket/").status_code for _ in range(5)] == [200] * 5
            victim = replacement(server, {survivor, victim})
        assert killed == 6
        assert server.process.poll() is None
        assert survivor in workers_of(server)
        wait_for(lambda: len(workers_of(server)) == 2, 15, "two workers again")
        assert "killed by SIGKILL" in server.stderr()
        assert server.stop() == 0


def test_server_gives_up_when_no_worker_can_run(tmp_path: Path) -> None:
    db = tmp_path / "kv.sqlite3"
    server = start_server(db, workers=2)
    try:
        wait_for(lambda: len(workers_of(server)) == 2, 10, "two workers")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.mkdir()  # no worker can open the database any more
        for pid in workers_of(server):
            os.kill(pid, signal.SIGKILL)
        assert server.process.wait(30) == 1
        lines = server.stderr().strip().splitlines()
        assert lines[-1].startswith("kvpio serve: no worker could run for 10 s")
        why = f" cannot use {db}: unable to open database file"
        assert any(line.endswith(why) for line in lines)
        assert not any(line.startswith("Traceback") for line in lines)
    finally:
        server.kill()


# defect 10: a damaged database is refused at start-up; `kvpio db check` checks it all


def damaged_database(path: Path) -> Path:
    storage = open_storage(str(path))
    try:
        key = storage.create_account("ada", "ada@example.invalid", "secret")
        assert storage.authenticate(key) == "ada"
        for index in range(300):
            storage.set("ada", (f"k{index}",), {"text": "x" * 600, "index": index})
    finally:
        storage.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    for number in range(20, 40):  # pages in the middle of the nodes table
        raw[number * page + 8 : number * page + 200] = os.urandom(192)
    path.write_bytes(bytes(raw))
    return path


def test_serve_refuses_a_damaged_database(tmp_path: Path) -> None:
    db = damaged_database(tmp_path / "kv.sqlite3")
    code, out, err = kvpio("serve", "--port", "0", "--db", str(db), home=tmp_path)
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"kvpio serve: the database {db} is damaged")
    assert f"kvpio db check --db {db}" in err


def test_db_check_reports_problems_of_a_damaged_database(tmp_path: Path) -> None:
    db = damaged_database(tmp_path / "kv.sqlite3")
    code, out, err = kvpio("db", "check", "--db", str(db), home=tmp_path)
    assert code == 1
    assert out.strip()
    assert f"kvpio db check: the database {db} is damaged" in err


def test_db_check_of_a_sound_database(tmp_path: Path) -> None:
    db = tmp_path / "kv.sqlite3"
    open_storage(str(db)).close()
    assert kvpio("db", "check", "--db", str(db), home=tmp_path) == (0, f"{db}: ok\n", "")


# defect 11: a changed --api-key


def test_restart_with_another_api_key_says_how_to_proceed(tmp_path: Path) -> None:
    db = tmp_path / "kv.sqlite3"
    with run_server(db=db, api_key="first"):
        pass
    code, out, err = kvpio("serve", "--port=0", f"--db={db}", "--api-key=second", home=tmp_path)
    assert code == 1
    assert out == ""
    assert err == (
        f"kvpio serve: the account 'default' of {db} has another API key: start with that key,"
        f" or without --api-key and add one with `kvpio accounts create --db {db}`\n"
    )


# defect 12: no side effects


def test_accounts_list_does_not_create_a_database(tmp_path: Path) -> None:
    code, out, err = kvpio("accounts", "list", home=tmp_path)
    default = tmp_path / ".local/share/kvpio/kvpio.sqlite3"
    assert (code, out) == (1, "")
    assert err == f"kvpio accounts list: no database at {default}\n"
    assert not (tmp_path / ".local").exists()


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "no" / "such" / "kv.sqlite3"
    code, out, err = kvpio("serve", "--port", "0", "--db", str(db), home=tmp_path)
    assert (code, out) == (1, "")
    assert err == f"kvpio serve: the directory {db.parent} does not exist (check --db)\n"
    assert not (tmp_path / "no").exists()


def test_the_default_location_is_created(tmp_path: Path) -> None:
    code, _, err = kvpio("accounts", "create", "--id", "ada", "--email", "a@b.c", home=tmp_path)
    assert code == 0, err
    assert (tmp_path / ".local/share/kvpio/kvpio.sqlite3").is_file()


def test_the_start_up_line_names_the_database(tmp_path: Path) -> None:
    db = tmp_path / "kv.sqlite3"
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "kvpio_mapping.server", "serve", "--port", "0", "--db", str(db)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        try:
            process.wait(STOP_GRACE + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError((tmp_path / "stderr").read_text()) from None
    assert line.startswith("kvpio serving on http://127.0.0.1:")
    assert line.endswith(f" (database {db})\n")


def test_integrity_check_catches_what_reads_would_hit(tmp_path: Path) -> None:
    """The damage the tests make is real: reads of the damaged file fail."""
    db = damaged_database(tmp_path / "kv.sqlite3")
    connection = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError):
        connection.execute("SELECT count(*), sum(length(body)) FROM nodes").fetchall()
    connection.close()


def test_the_check_stops_at_its_time_bound(tmp_path: Path) -> None:
    from kvpio_mapping.server.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(str(tmp_path / "kv.sqlite3"))
    try:
        storage.create_account("ada", "ada@example.invalid")
        storage.set_many("ada", [((f"k{n}",), {"text": "x" * 600}) for n in range(1000)])
        with pytest.raises(TimeoutError):
            storage.check(full=True, seconds=0.0)
        assert storage.check(full=False, seconds=5.0) == []
        assert storage.check() == []
    finally:
        storage.close()
