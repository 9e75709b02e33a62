"""SQLite only: one file shared by connections, threads and processes, its blob
thresholds, its durability and the databases of earlier releases."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kvpio_mapping import paths
from kvpio_mapping.paths import Path
from kvpio_mapping.server.storage import (
    MemoryStorage,
    Storage,
)
from kvpio_mapping.server.storage import sqlite as sqlite_storage
from kvpio_mapping.server.storage.base import (
    CHANGE_LOG_REVISIONS,
    LOGGED_ENTRIES,
    Change,
    Changes,
    Committed,
    Operation,
    TopLevelSets,
    Write,
    hash_key,
)
from kvpio_mapping.server.storage.sqlite import BLOB_THRESHOLD, CHECKPOINT_ROWS, SQLiteStorage
from kvpio_mapping.testing.storage import (
    COMMITS,
    FLAT_OPERATIONS,
    OPERATIONS,
    assert_commits_agree_with_a_model,
    assert_flat_operations_agree,
    assert_operations_agree,
    big_doc,
    counted,
    dict_count,
    j,
    p,
)

ROOT = FilePath(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def random_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Storage]]:
    folder = tmp_path_factory.mktemp("random")
    backends: list[Storage] = [
        MemoryStorage(),
        SQLiteStorage(str(folder / "default.sqlite3")),
        SQLiteStorage(str(folder / "tiny.sqlite3"), blob_threshold=24),
    ]
    yield backends
    for backend in backends:
        backend.close()


@pytest.fixture(scope="module")
def flat_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Storage]]:
    folder = tmp_path_factory.mktemp("flat")
    backends: list[Storage] = [MemoryStorage()]
    for threshold in (24, 96, 256, BLOB_THRESHOLD):
        backends.append(
            SQLiteStorage(str(folder / f"{threshold}.sqlite3"), blob_threshold=threshold)
        )
    yield backends
    for backend in backends:
        backend.close()


# SQLite only: one file, many connections, threads and processes


def test_sqlite_second_instance_sees_committed_writes(tmp_path: FilePath) -> None:
    path = str(tmp_path / "deep" / "dir" / "db.sqlite3")
    first = SQLiteStorage(path)
    second = SQLiteStorage(path)
    first.create_account("a", "", "k")
    first.set("a", p("x"), big_doc(20_000))
    assert second.authenticate("k") == "a"
    assert second.get("a", p("x/meta/owner")) == '"ops"'
    second.set("a", p("x/meta/owner"), "dev")
    assert first.get("a", p("x/meta/owner")) == '"dev"'
    first.close()
    second.close()


def test_sqlite_uses_wal_with_normal_sync(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    conn = storage._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    storage.close()


def test_sqlite_threads_writing_siblings_lose_nothing(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("top/seed"), "s" * BLOB_THRESHOLD)

    def write(worker: int) -> None:
        for i in range(40):
            storage.set("a", ("top", f"w{worker}-{i}"), {"n": i, "pad": "x" * (i * 20)})

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    keys = storage.keys("a", p("top"))
    assert len(keys) == 1 + 4 * 40
    assert storage.get("a", p("top/w3-39/n")) == "39"
    storage.close()


_CHILD = """
import sys
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
storage = SQLiteStorage(sys.argv[1])
storage.ensure_account("k", "a")
for i in range(int(sys.argv[3])):
    storage.set("a", ("top", f"{sys.argv[2]}-{i}"), {"i": i, "pad": "p" * 200})
    print(i, flush=True)
"""


def _child(db: str, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, db, name, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_sqlite_processes_writing_one_file_lose_nothing(tmp_path: FilePath) -> None:
    db = str(tmp_path / "db.sqlite3")
    children = [_child(db, f"p{n}", 60) for n in range(2)]
    for child in children:
        child.communicate(timeout=60)
        assert child.returncode == 0
    storage = SQLiteStorage(db)
    assert len(storage.keys("a", p("top"))) == 120
    assert storage.revision("a") == 120
    storage.close()


_COUNTING = """
import sys
from kvpio_mapping.server.storage.base import Operation
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
storage = SQLiteStorage(sys.argv[1], blob_threshold=64)
name = sys.argv[2]
for i in range(40):
    storage.set("a", (f"{name}-{i}",), i)
    storage.set("a", ("shared", f"{name}-{i}"), [i] * (i % 4))
    storage.commit("a", [Operation("append", ("log",), i), Operation("merge", ("m",), {name: i})])
    if i % 3 == 0:
        storage.delete("a", (f"{name}-{i // 2}",))
        storage.delete("a", ("shared", f"{name}-{i // 3}"))
        storage.delete("a", ("log", "1"))
"""


def test_sqlite_counts_stay_exact_under_processes_writing_one_file(tmp_path: FilePath) -> None:
    db = str(tmp_path / "db.sqlite3")
    storage = SQLiteStorage(db, blob_threshold=64)
    storage.create_account("a", "", "k")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _COUNTING, db, f"p{n}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for n in range(3)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0
    try:
        data = json.loads(storage.get_all("a"))
        for path in ((), p("shared"), p("log"), p("m")):
            assert counted(storage, "a", path) == dict_count(data, path), path
        assert len(data["shared"]) == 3 * (40 - 14) and len(data["m"]) == 3
    finally:
        storage.close()


def test_sqlite_acknowledged_writes_survive_kill(tmp_path: FilePath) -> None:
    db = str(tmp_path / "db.sqlite3")
    child = _child(db, "k", 100_000)
    assert child.stdout is not None
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 50:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    storage = SQLiteStorage(db)
    for i in range(acknowledged + 1):
        assert json.loads(storage.get("a", ("top", f"k-{i}")) or "null") == {
            "i": i,
            "pad": "p" * 200,
        }
    storage.close()


def _rows(storage: SQLiteStorage, account: str) -> int:
    conn = storage._conn()
    return int(
        conn.execute("SELECT count(*) FROM nodes WHERE account = ?", (account,)).fetchone()[0]
    )


def test_sqlite_leaf_write_in_large_document_changes_few_rows(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("doc"), big_doc(2_000_000))
    conn = storage._conn()
    largest = conn.execute("SELECT max(length(CAST(body AS BLOB))) FROM nodes").fetchone()[0]
    assert largest <= BLOB_THRESHOLD
    before = conn.total_changes
    storage.set("a", p("doc/users/u100/profile/age"), 1)
    storage.set("a", p("doc/users/u200/history/4"), {"at": 0, "what": "new"})
    # Eight tree rows at most, and one change-log row per write.
    assert conn.total_changes - before <= 8 + 2
    storage.close()


def test_sqlite_a_stored_top_level_key_given_a_scalar_is_one_update(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    for key, value in [("first", 1), ("small", {"x": [1, 2]}), ("split", big_doc(20_000))]:
        storage.set("a", p(key), value)
    statements: list[str] = []
    storage._conn().set_trace_callback(statements.append)
    storage.set("a", p("small"), "now a scalar")
    assert [s for s in statements if "nodes" in s] == [s for s in statements if "UPDATE nodes" in s]
    assert len([s for s in statements if "nodes" in s]) == 1  # no lookup first
    statements.clear()
    storage.commit("a", [Operation("increment", p("first"), 2)])
    writes = [s for s in statements if "nodes" in s and not s.startswith("SELECT")]
    assert len(writes) == 1 and writes[0].startswith("UPDATE nodes")
    # A split container given a scalar, and a new key, take the usual way.
    storage.set("a", p("split"), 0)
    storage.commit("a", [Operation("increment", p("new"), 5)])
    assert json.loads(storage.get_all("a")) == {
        "first": 3,
        "small": "now a scalar",
        "split": 0,
        "new": 5,
    }
    assert storage.keys("a") == ["first", "small", "split", "new"]
    assert storage.count("a")[0] == 4
    assert _rows(storage, "a") == 4
    storage.close()


def test_sqlite_large_value_is_split_and_merged_back_when_small(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("s"), {f"k{i}": "v" * (BLOB_THRESHOLD // 4) for i in range(8)})
    assert _rows(storage, "a") == 9
    for i in range(7):
        storage.delete("a", ("s", f"k{i}"))
    assert _rows(storage, "a") == 1
    storage.set("a", p("s/k7"), "w" * (2 * BLOB_THRESHOLD))
    storage.set("a", p("s/k8"), "small")
    assert _rows(storage, "a") == 3
    assert storage.get("a", p("s")) == j({"k7": "w" * (2 * BLOB_THRESHOLD), "k8": "small"})
    storage.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sqlite_storage_used_after_fork_opens_its_own_connection(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("parent"), 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            storage.set("a", p("child"), 2)
            os._exit(0 if storage.get("a", p("parent")) == "1" else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.get("a", p("child")) == "2"
    storage.set("a", p("parent"), 3)
    assert storage.get_all("a") == j({"parent": 3, "child": 2})
    storage.close()


def test_sqlite_long_flat_containers_take_few_rows(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("l"), list(range(100_000)))
    storage.set("a", p("o"), {f"k{i}": i for i in range(50_000)})
    assert _rows(storage, "a") < 2_000
    conn = storage._conn()
    before = conn.total_changes
    storage.delete("a", p("l/2"))
    storage.set("a", p("l/50000"), "changed")
    storage.set("a", p("o/k25000"), "changed")
    storage.delete("a", p("o/k3"))
    assert conn.total_changes - before < 1_000
    expected = list(range(100_000))
    del expected[1]
    expected[49_999] = "changed"
    assert storage.get("a", p("l")) == j(expected)
    assert storage.get("a", p("o/k25000")) == '"changed"'
    assert storage.get("a", p("o/k3")) is None
    storage.close()


def test_sqlite_database_made_before_revisions_gains_them(tmp_path: FilePath) -> None:
    db = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, email TEXT NOT NULL,"
            " key_digest TEXT NOT NULL UNIQUE, reads INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO accounts (id, email, key_digest) VALUES ('old', '', 'x')")
    conn.close()
    storage = SQLiteStorage(db)
    try:
        assert storage.revision("old") == 0
        assert storage.commit("old", [Operation("increment", p("n"), 1)]).revision == 1
        assert storage.read("old", p("n")) == ("1", 1)
    finally:
        storage.close()


def test_sqlite_processes_writing_one_file_log_every_revision(tmp_path: FilePath) -> None:
    db = str(tmp_path / "shared.sqlite3")
    SQLiteStorage(db).create_account("a", "", "a-key")
    script = (
        "import sys\n"
        "from kvpio_mapping.server.storage.sqlite import SQLiteStorage\n"
        "s = SQLiteStorage(sys.argv[1])\n"
        "for n in range(50):\n"
        "    s.set('a', (sys.argv[2],), n)\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, db, f"w{w}"], cwd=ROOT) for w in range(3)
    ]
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    storage = SQLiteStorage(db)
    try:
        logged = storage.changes("a", 0)
        assert logged.complete and logged.revision == 150
        assert [change.revision for change in logged.changes] == list(range(1, 151))
        for w in range(3):
            mine = [change.text for change in logged.changes if change.path == (f"w{w}",)]
            assert mine == [str(n) for n in range(50)]
    finally:
        storage.close()


def test_sqlite_database_made_before_the_change_log_starts_it_at_its_revision(
    tmp_path: FilePath,
) -> None:
    db = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, email TEXT NOT NULL,"
            " key_digest TEXT NOT NULL UNIQUE, reads INTEGER NOT NULL DEFAULT 0,"
            " revision INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO accounts (id, email, key_digest, revision) VALUES ('old', '', 'x', 7)"
        )
    conn.close()
    storage = SQLiteStorage(db)
    try:
        assert storage.changes("old", 6) == Changes(7, [], False)
        assert storage.changes("old", 7) == Changes(7, [], True)
        storage.set("old", p("n"), 1)
        assert storage.changes("old", 7) == Changes(8, [Change(8, "put", p("n"), "1")], True)
    finally:
        storage.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_random_operations_agree_across_blob_thresholds(
    random_backends: list[Storage], operations: list[tuple[Any, ...]]
) -> None:
    assert_operations_agree(random_backends, operations)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=FLAT_OPERATIONS, length=st.integers(0, 60), size=st.integers(0, 3))
def test_random_operations_on_long_flat_containers_agree_across_blob_thresholds(
    flat_backends: list[Storage], operations: list[tuple[Any, ...]], length: int, size: int
) -> None:
    assert_flat_operations_agree(flat_backends, operations, length, size)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commits=COMMITS)
def test_random_atomic_commits_agree_across_blob_thresholds(
    random_backends: list[Storage], commits: list[tuple[list[Operation], list[tuple[Path, int]]]]
) -> None:
    assert_commits_agree_with_a_model(random_backends, commits)


def test_sqlite_cached_read_asks_the_database_nothing_until_a_commit(
    tmp_path: FilePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However many databases the tests before this one mapped in this process.
    monkeypatch.setattr(sqlite_storage, "MAPPED_FILES", sqlite_storage._opened + 1)
    db = str(tmp_path / "db.sqlite3")
    storage, other = SQLiteStorage(db), SQLiteStorage(db)
    storage.create_account("a", "", "k")
    storage.set("a", p("x"), {"y": 1})
    assert storage.read("a", p("x/y")) == ("1", 1)
    assert storage.read("a", p("x/y")) == ("1", 1)  # found current by asking data_version
    statements: list[str] = []
    storage._conn().set_trace_callback(statements.append)
    for _ in range(3):
        assert storage.read("a", p("x/y")) == ("1", 1)
    assert statements == []
    assert storage.read_cache_hits == 4
    other.set("a", p("x/y"), 2)
    assert storage.read("a", p("x/y")) == ("2", 2)
    assert statements != []
    storage.close()
    other.close()


def _bulk(text: str, later: bool = False, threads: list[str] | None = None) -> TopLevelSets:
    """The sets of ``text``; ``later``: decoded as the storage reads them (in ``threads``)."""

    def decode() -> TopLevelSets:
        if threads is not None:
            threads.append(threading.current_thread().name)
        return _bulk(text)

    if later:
        return TopLevelSets.decoded_later(text.encode(), decode)
    return TopLevelSets(json.loads(text), text.encode())


def test_top_level_sets_read_as_the_list_of_their_operations() -> None:
    text = '{"a": 1, "b": [2], "c": null}'
    sets, operations = _bulk(text), [Operation("set", (k,), v) for k, v in json.loads(text).items()]
    assert list(sets) == operations and len(sets) == 3
    assert [sets[0], sets[-1], sets[1:]] == [operations[0], operations[-1], operations[1:]]
    assert list(reversed(sets)) == operations[::-1] and sets.index(operations[1]) == 1
    for outside in (3, -4):
        with pytest.raises(IndexError):
            sets[outside]


@pytest.mark.parametrize("later", [False, True], ids=["decoded", "decoded meanwhile"])
def test_sqlite_stores_a_plain_bulk_import_with_one_statement(
    tmp_path: FilePath, later: bool
) -> None:
    storage, reference = SQLiteStorage(str(tmp_path / "db.sqlite3")), MemoryStorage()
    members = {
        f"key {n}: {{[ü": ["a:{[b", n, -n, True, False, None, "日本"][n % 7] for n in range(1500)
    }
    # Whitespace between tokens, and numbers written unusually but within 64 bits.
    text = (
        json.dumps(members, indent=1, ensure_ascii=False)[:-1] + ',"neg":-0,"e":999999999999999999}'
    )
    for made in (storage, reference):
        made.create_account("a", "", "k")
        made.set("a", p("before"), {"x": 1})
    statements: list[str] = []
    storage._conn().set_trace_callback(statements.append)
    threads: list[str] = []
    storage.commit("a", _bulk(text, later, threads))
    reference.commit("a", _bulk(text))
    assert threads == (["kvpio-decode"] if later else [])
    inserts = [s for s in statements if s.startswith("INSERT INTO nodes")]
    assert len(inserts) == 1 and "json_each" in inserts[0]
    assert storage.get_all("a") == reference.get_all("a")
    assert json.loads(storage.get_all("a"))["neg"] == 0
    assert storage.keys("a") == reference.keys("a")
    assert storage.count("a") == reference.count("a")
    statements.clear()
    again = json.dumps({**{f"new{n}": n for n in range(1500)}, "key 3: {[ü": "again"})
    storage.commit("a", _bulk(again, later))  # a key stored already: the usual way
    reference.commit("a", _bulk(again))
    inserts = [s for s in statements if s.startswith("INSERT INTO nodes")]
    assert inserts and not any("json_each" in s for s in inserts)
    assert storage.get_all("a") == reference.get_all("a")
    assert storage.count("a") == reference.count("a")
    storage.close()


_PAD = {f"pad{n}": n for n in range(LOGGED_ENTRIES + 1)}
_SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.dictionaries(st.text(min_size=1, max_size=8), _SCALARS, max_size=4),
    members=st.dictionaries(st.text(min_size=1, max_size=12), _SCALARS, max_size=12),
    ascii_only=st.booleans(),
    later=st.booleans(),
)
def test_random_bulk_imports_store_what_the_reference_stores(
    random_backends: list[Storage],
    before: dict[str, Any],
    members: dict[str, Any],
    ascii_only: bool,
    later: bool,
) -> None:
    assume(paths.one_segment_each(before) and paths.one_segment_each(members))
    again = dict.fromkeys(list(members)[::2], "again")  # keys written twice in the text
    parts = (json.dumps(part, ensure_ascii=ascii_only)[1:-1] for part in (members, _PAD, again))
    text = "{" + ",".join(part for part in parts if part) + "}"
    account = uuid.uuid4().hex
    for storage in random_backends:
        storage.create_account(account, "")
        storage.set_many(account, [((key,), value) for key, value in before.items()])
        storage.commit(account, _bulk(text, later))
    reference, *others = random_backends
    for storage in others:
        assert storage.get_all(account) == reference.get_all(account)
        assert storage.count(account) == reference.count(account)


_GROUPED = st.lists(
    st.tuples(
        st.sampled_from(["set", "set", "set", "below", "increment", "delete", "gone", "wrong key"]),
        st.sampled_from(["k0", "k1", "k2"]),
        st.one_of(_SCALARS, st.lists(st.integers(), max_size=3)),
    ),
    min_size=2,
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=_GROUPED, digest=st.booleans())
def test_a_group_commits_what_its_writes_commit_one_by_one(
    random_backends: list[Storage], writes: list[tuple[str, str, Any]], digest: bool
) -> None:
    """SQLite commits a group in one transaction, runs of top-level sets in one batch; the
    reference commits each write alone: outcomes, values, counts and the log agree."""
    account, gone = uuid.uuid4().hex, uuid.uuid4().hex
    key = hash_key(account) if digest else None
    group = []
    for kind, name, value in writes:
        operation = {
            "below": Operation("set", (name, "x"), value),
            "increment": Operation("increment", (name,), 1),
            "delete": Operation("delete", (name,)),
        }.get(kind, Operation("set", (name,), value))
        owner = gone if kind == "gone" else account
        wrong = hash_key("wrong") if kind == "wrong key" else key
        group.append(Write(owner, [operation], (), wrong))
    found = []
    for storage in random_backends:
        storage.create_account(account, "", account)
        storage.create_account(gone, "", gone)
        storage.delete_account(gone)
        outcomes = storage.commit_group(group)
        found.append(
            (
                [o if isinstance(o, Committed) else type(o) for o in outcomes],
                storage.get_all(account),
                storage.keys(account),
                storage.count(account),
                storage.changes(account, 0),
            )
        )
    assert found[1:] == found[:1] * (len(found) - 1)


def test_commit_group_now_commits_at_once_or_does_nothing(tmp_path: FilePath) -> None:
    """It never waits: on a lock held elsewhere, or a sync to disk, it is None and writes
    nothing; else it commits as commit_group would."""
    path = str(tmp_path / "db.sqlite3")
    storage = SQLiteStorage(path)
    storage.create_account("a", "", "k")
    group = [Write("a", [Operation("set", (f"k{n}",), n)], (), hash_key("k")) for n in range(3)]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert storage.commit_group_now(group) is None
    assert time.monotonic() - started < 1
    holder.execute("ROLLBACK")
    with storage._turn.held(1):  # another thread's turn at the lock
        found: list[object] = []
        other = threading.Thread(target=lambda: found.append(storage.commit_group_now(group)))
        other.start()
        other.join(5)
        assert found == [None]
    assert storage.get_all("a") == "{}" and storage.revision("a") == 0
    assert storage.commit_group_now(group) == [Committed(n, [None]) for n in (1, 2, 3)]
    assert storage.get_all("a") == '{"k0":0,"k1":1,"k2":2}'
    full = SQLiteStorage(str(tmp_path / "full.sqlite3"), sync="full")
    full.create_account("a", "", "k")
    assert full.commit_group_now(group) is None and full.revision("a") == 0
    for made in (storage, full):
        made.close()
    holder.close()


def test_commit_group_now_gives_up_a_group_still_at_work_past_its_deadline(
    tmp_path: FilePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small write can do much work (delete a large value): past NOW_SECONDS the group is
    interrupted and rolled back, and commit_group does it."""
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    storage.set("a", p("big"), big_doc(2_000_000))
    before = (storage.get_all("a"), storage.revision("a"))
    group = [Write("a", [Operation("delete", ("big",))], (), hash_key("k"))]
    monkeypatch.setattr(sqlite_storage, "NOW_SECONDS", 0.0)
    assert storage.commit_group_now(group) is None
    assert (storage.get_all("a"), storage.revision("a")) == before
    assert storage.commit_group(group) == [Committed(2, [None])]
    assert storage.get_all("a") == "{}"
    monkeypatch.undo()
    assert storage.commit_group_now([group[0]._replace(operations=[Operation("set", ("x",), 1)])])
    storage.close()


def test_a_write_of_a_run_refused_leaves_its_neighbours_committed(tmp_path: FilePath) -> None:
    """A run of top-level sets is stored together: one that fails (a text UTF-8 cannot
    hold, which the server never sends) makes the group commit each write alone."""
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    group = [
        Write("a", [Operation("set", (key,), value)], (), hash_key("k"))
        for key, value in (("x", 1), ("lone", "\ud800"), ("y", 2))
    ]
    assert storage.commit_group_now(group) is None
    assert storage.revision("a") == 0
    first, refused, last = storage.commit_group(group)
    assert isinstance(refused, ValueError)
    assert (first, last) == (Committed(1, [None]), Committed(2, [None]))
    assert storage.get_all("a") == '{"x":1,"y":2}'
    storage.close()


def test_commit_group_now_from_a_thread_that_never_read_commits_once(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "", "k")
    found: list[object] = []
    write = Write("a", [Operation("set", ("x",), 1)], (), hash_key("k"))
    fresh = threading.Thread(target=lambda: found.append(storage.commit_group_now([write])))
    fresh.start()
    fresh.join(10)
    assert found == [[Committed(1, [None])]] and storage.revision("a") == 1
    storage.close()


_WRITE_ON_REQUEST = """
import sys
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
storage = SQLiteStorage(sys.argv[1])
for line in sys.stdin:
    storage.set("a", ("x", "y"), int(line))
    print("committed", flush=True)
"""


def test_sqlite_cached_reads_see_each_commit_of_another_process(tmp_path: FilePath) -> None:
    db = str(tmp_path / "db.sqlite3")
    storage = SQLiteStorage(db)
    storage.create_account("a", "", "k")
    storage.set("a", p("x"), {"y": 0})
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITE_ON_REQUEST, db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        for n in range(1, 101):
            for _ in range(3):  # the first read after a commit misses, the others hit
                assert storage.read("a", p("x/y")) == (str(n - 1), n)
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
            assert child.stdout.readline() == "committed\n"
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert storage.read("a", p("x/y")) == ("100", 101)
    assert storage.read_cache_hits == 200
    assert child.returncode == 0
    storage.close()


_PROBE_SHM_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)  # SQLite's DMS byte
except OSError:
    print("held")
else:
    print("free")
"""


def _shm_lock(db: str) -> str:
    """Whether another process finds SQLite's lock on the database's -shm file held."""
    probe = [sys.executable, "-c", _PROBE_SHM_LOCK, db]
    return subprocess.run(probe, capture_output=True, text=True, timeout=60).stdout.strip()


def test_sqlite_cached_reads_keep_the_locks_sqlite_holds_on_the_shm_file(
    tmp_path: FilePath,
) -> None:
    # Closing any descriptor of a file lets go of the process's POSIX locks on it: were the
    # one mapping the WAL index header closed, another process opening the database first
    # would truncate the -shm file under this one's connections.
    db = str(tmp_path / "db.sqlite3")
    storage = SQLiteStorage(db)
    storage.create_account("a", "", "k")
    storage.set("a", p("x"), 1)
    assert _shm_lock(db) == "held"
    for _ in range(3):
        assert storage.read("a", p("x")) == ("1", 1)
    assert _shm_lock(db) == "held"
    storage.close()
    again = SQLiteStorage(db)  # the same -shm file, mapped already
    assert again.read("a", p("x")) == ("1", 1)
    assert again.read("a", p("x")) == ("1", 1)
    assert _shm_lock(db) == "held"
    SQLiteStorage(db).set("a", p("x"), 2)
    assert again.read("a", p("x")) == ("2", 2)
    again.close()


def test_sqlite_change_log_drops_the_revisions_it_stopped_keeping(tmp_path: FilePath) -> None:
    storage = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    storage.create_account("a", "")
    try:
        for n in range(2 * CHANGE_LOG_REVISIONS):
            storage.set("a", ("n",), n)
        with storage._read() as conn:
            rows = conn.execute("SELECT count(*), min(revision) FROM changes").fetchone()
        changes = storage.changes("a", storage.revision("a") - CHANGE_LOG_REVISIONS)
    finally:
        storage.close()
    # Dropped a batch of revisions at a time: never more than one batch beyond those kept.
    assert CHANGE_LOG_REVISIONS <= rows[0] < CHANGE_LOG_REVISIONS + 64
    assert rows[1] > CHANGE_LOG_REVISIONS - 64  # the first revisions are gone
    assert changes.complete and len(changes.changes) == CHANGE_LOG_REVISIONS


def test_sqlite_checkpoints_run_off_the_commits_and_keep_the_log_bounded(
    tmp_path: FilePath,
) -> None:
    db = str(tmp_path / "db.sqlite3")
    storage = SQLiteStorage(db)
    storage.create_account("a", "")
    try:
        with storage._write() as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for n in range(3 * CHECKPOINT_ROWS):
            storage.set("a", (f"k{n % 50}",), "x" * 500)
        storage.close()  # waits for the checkpoints asked for
        assert storage.checkpoints >= 2
        # A whole checkpoint lets the next write start the log over: the log never
        # grew to hold every write's pages (tens of MB).
        wal = db + "-wal"
        assert not os.path.exists(wal) or os.path.getsize(wal) < 16 << 20
        reopened = SQLiteStorage(db)
        assert reopened.read("a", ("k49",)) == (json.dumps("x" * 500), 3 * CHECKPOINT_ROWS)
        reopened.close()
    finally:
        storage.close()
