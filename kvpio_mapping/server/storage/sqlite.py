"""A SQLite storage: one database file, shared by threads and processes.

The tree of rows is :mod:`.tree`'s; this module supplies SQLite's schema,
connections and transactions, its read cache and its checks.

Every write is one ``BEGIN IMMEDIATE`` transaction that starts by raising
the account's ``revision`` (so a write that fails or is refused takes the
raise back with everything else), committed before the
call returns; with WAL and ``synchronous=NORMAL`` (the default) an
acknowledged write survives the process being killed, and with ``FULL``
also a power loss or an operating system crash. Each thread uses its own connection.
A group commit (:meth:`~.tree.TreeStorage.commit_group`) is one such
transaction, a savepoint per write, and one sync. Processes take turns at
the write lock through a record lock on ``DB-writer`` (:class:`_WriterTurn`).

Each connection keeps the texts of its last :data:`READ_CACHE_ENTRIES`
:meth:`SQLiteStorage.read` answers (text and revision) of at most a blob's size. An entry is used
only while ``PRAGMA data_version`` is the one it was stored under (read
inside the read transaction that computed it, so it describes that
snapshot): any commit by another connection, in this process or another,
changes it.
The connection's own commits do not, so every write transaction empties
the cache of the connection that ran it.

Asking for ``data_version`` opens a read transaction, and with it takes and
lets go of a lock in the ``-shm`` file (two system calls): most of a cached
read's time. So the process maps the WAL index's header once
(https://www.sqlite.org/walformat.html, "The WAL-Index Header"), which every
commit rewrites (``iChange`` counts the transactions), and each connection
keeps its bytes as read just before a ``data_version`` found its entries
current: while the header holds those bytes still, nothing was committed
since, and the entries are used without asking. A header read mid-rewrite
differs from the kept one, and so only costs the statement.

SQLite's own checkpoints (copying the WAL back into the database file, with
its syncs) would run inside the commit that passes 1,000 pages of log, and
so in that request's time: connections turn them off
(``wal_autocheckpoint = 0``), and once a process's commits have changed
:data:`CHECKPOINT_ROWS` rows since its last checkpoint, the next runs in a
thread of its own (:meth:`SQLiteStorage._checkpoint`). A ``PASSIVE``
checkpoint waits for no one and no writer waits for it; the next write
after a whole one starts the log over.

The change log is the ``changes`` table, one row per logged change keyed by
``(account, revision, seq)``, written by the transaction that makes the
revision; the same transaction drops the rows the log no longer keeps.
``log_start`` is the revision an account's log began at (its revision when
a database made before the log was opened).
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitedTooLong
from contextlib import contextmanager, suppress
from typing import Final

from ...forks import reset_after_fork
from ...paths import Path
from .base import (
    REFUSALS,
    Committed,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    Write,
    check_operations,
)
from .schema import Migration, migrate
from .tree import BLOB, BLOB_THRESHOLD, TreeStorage, count_children

BUSY_TIMEOUT_MS: Final = 10_000

CHECKPOINT_ROWS: Final = 1000
"""Rows a process's commits change before it checkpoints the WAL: a small write changes
a row or two per page it writes, so about the 1,000 pages after which SQLite's would."""

NOW_SECONDS: Final = 0.005
"""Longest :meth:`SQLiteStorage.commit_group_now` works before giving the group up."""
_DEADLINE_STEPS: Final = 1000
"""SQLite's virtual machine steps between looks at a :class:`_Deadline`."""

READ_CACHE_ENTRIES: Final = 1024
"""Answers of :meth:`SQLiteStorage.read` each connection keeps (see the module's notes)."""

_DATA_VERSION: Final = "PRAGMA data_version"
"""Run on a cursor kept per connection: a cached read's one statement, without making a cursor."""

_WAL_HEADER: Final = 48
"""Bytes of the WAL index's header: its first copy, the one a commit writes last."""
_WAL_VERSION: Final = 3007000
"""The header's ``iVersion``, its first field (in the machine's byte order), in the known format."""
MAPPED_FILES: Final = 64
"""Most ``-shm`` files a process opens to map (see :func:`_map_wal_header`)."""

_mapped: dict[str, tuple[tuple[int, int], mmap.mmap | None]] = {}  # -shm path: (device, inode), map
_kept: list[mmap.mmap] = []  # every mapping made, never closed
_opened = 0
_mapped_lock = threading.Lock()


def _map_wal_header(path: str) -> mmap.mmap | None:
    """The WAL index header of the database at ``path``, mapped read-only; None without one.

    Called with a connection of this process open on the database, so the
    ``-shm`` file at its path is the one SQLite uses, and stays so (SQLite
    keeps it, whole, while any connection has it open). Its descriptor is
    never closed: closing any descriptor of a file lets go of every POSIX lock
    the process holds on it, SQLite's own locks on the ``-shm`` file among
    them, and a mapping holds a descriptor of its own. So a process opens
    and maps each ``-shm`` file once, at most :data:`MAPPED_FILES` of them,
    and keeps every mapping it made.
    """
    global _opened
    shm = path + "-shm"
    with _mapped_lock:
        try:
            found = os.stat(shm)
        except OSError:
            return None
        identity = (found.st_dev, found.st_ino)
        kept = _mapped.get(shm)
        if kept is not None and kept[0] == identity:
            return kept[1]
        if _opened >= MAPPED_FILES:
            return None
        try:
            fd = os.open(shm, os.O_RDONLY)
        except OSError:
            return None
        _opened += 1
        opened = os.fstat(fd)
        header: mmap.mmap | None = None
        with suppress(OSError, ValueError):  # not a file to map, or shorter than a header
            header = mmap.mmap(fd, _WAL_HEADER, access=mmap.ACCESS_READ)
            _kept.append(header)
        if header is not None and int.from_bytes(header[:4], sys.byteorder) != _WAL_VERSION:
            header = None
        _mapped[shm] = ((opened.st_dev, opened.st_ino), header)
        return header


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    key_digest TEXT NOT NULL UNIQUE,
    reads INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0,
    log_start INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nodes (
    account TEXT NOT NULL,
    path BLOB NOT NULL,
    parent BLOB NOT NULL,
    pos INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    label TEXT NOT NULL,
    body TEXT,
    size INTEGER NOT NULL,
    PRIMARY KEY (account, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nodes_children ON nodes (account, parent, pos);
CREATE TABLE IF NOT EXISTS members (
    account TEXT NOT NULL,
    path BLOB NOT NULL,
    run BLOB NOT NULL,
    PRIMARY KEY (account, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    account TEXT NOT NULL,
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    path BLOB NOT NULL,
    body TEXT,
    PRIMARY KEY (account, revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS templates (
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    pos INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (account, name)
) WITHOUT ROWID;
"""


_NEW_TOP_ROWS: Final = (
    "INSERT INTO nodes (account, path, parent, pos, kind, label, body, size, children)"
    f" SELECT ?, CAST(key AS BLOB), x'', ? + id, {BLOB}, '\"' || key || '\":', body,"
    " length(CAST(body AS BLOB)), 0 FROM (SELECT key, id, CASE type"
    " WHEN 'text' THEN '\"' || value || '\"' WHEN 'integer' THEN CAST(value AS TEXT)"
    " WHEN 'true' THEN type WHEN 'false' THEN type WHEN 'null' THEN type END AS body"
    " FROM json_each(?))"
)
""":attr:`.tree.TreeStorage.new_top_rows` (JSON is built in from SQLite 3.38): ``json_each``'s
``id`` grows in the text's order, and the ``type`` of ``true``, ``false`` and ``null`` is
their text. Any other value (a float, a container) has no body, nor a ``size``: the
statement fails at once on the ``NOT NULL`` of ``size``."""


def _create_tables(conn: sqlite3.Connection) -> None:
    """Schema version 1: the layout above, also over a database of release 0.1."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
    if "revision" not in columns:
        # Release 0.1 made the accounts table without revisions.
        conn.execute("ALTER TABLE accounts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")
    if "log_start" not in columns:
        # A database made before the change log: it starts at today's revisions.
        conn.execute("ALTER TABLE accounts ADD COLUMN log_start INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE accounts SET log_start = revision")


def _add_children(conn: sqlite3.Connection) -> None:
    """Schema version 2: each split container and account keeps its count of children."""
    conn.execute("ALTER TABLE nodes ADD COLUMN children INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE accounts ADD COLUMN children INTEGER NOT NULL DEFAULT 0")
    count_children(conn)


MIGRATIONS: Final[tuple[Migration, ...]] = (_create_tables, _add_children)
"""The schema's versions, in order (see :mod:`.schema`); append, never edit, one."""


_BUSY_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_BUSY_MESSAGES: Final = ("database is locked", "database table is locked")
_FULL_CODE: Final = 13  # SQLITE_FULL
_FULL_MESSAGE: Final = "database or disk is full"


@contextmanager
def _translated() -> Iterator[None]:
    """Turn SQLite's "busy" and "full" failures into the storage's own errors."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        message = str(exc)
        if code in _BUSY_CODES or message.startswith(_BUSY_MESSAGES):
            raise _busy() from exc
        if code == _FULL_CODE or message.startswith(_FULL_MESSAGE):
            raise StorageFullError("the disk holding the database is full") from exc
        raise


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out other processes doing the same.

    Switching the journal mode ignores the busy timeout, so two processes
    opening a new database at once would otherwise see "database is locked".
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _GaveUp(Exception):
    """:meth:`SQLiteStorage.commit_group_now` rolled its group back: a thread is to do it."""


class _Deadline:
    """A connection's progress handler: true, interrupting the statement, once past ``at``."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf

    def __call__(self) -> bool:
        return time.monotonic() > self.at


class _WriterTurn:
    """The processes' turns at SQLite's write lock, handed over as soon as it is free.

    SQLite waits for its write lock by sleeping and trying again, sleeps that
    grow to 100 ms, so the process that just committed nearly always takes
    the lock again and another worker's writes wait tens of milliseconds. A
    POSIX record lock on a file beside the database, taken before ``BEGIN
    IMMEDIATE``, puts the waiting processes to sleep in the kernel, which
    wakes them when it is let go. The kernel also lets it go with a process
    that dies, so a killed worker never leaves it held.

    The kernel's wait has no timeout, so it runs in a thread of its own and
    the writer waits for it at most ``timeout`` seconds; a turn that comes
    after its writer gave up is let go at once.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1
        self._pid = 0
        # The record lock is the process's, so this process's threads take turns first.
        self._threads = threading.Lock()
        self._waiter: ThreadPoolExecutor | None = None
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: none of the parent's turn, its threads or its descriptor."""
        self._threads = threading.Lock()
        self._waiter = None
        if self._pid:
            with suppress(OSError):
                os.close(self._fd)
        self._pid = 0

    def _open(self) -> int:
        """This process's descriptor of the lock file (a forked child opens its own)."""
        if not self._pid:  # none yet, or a fork since (see _after_fork)
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
            self._waiter = ThreadPoolExecutor(1, thread_name_prefix="kvpio-writer-turn")
        return self._fd

    @contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        """Hold the turn for the block; :class:`StorageBusyError` after ``timeout`` seconds."""
        started = time.monotonic()
        if not self._threads.acquire(timeout=timeout):
            raise _busy()
        try:
            self._take(self._open(), timeout - (time.monotonic() - started))
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        """Close this process's descriptor of the lock file (letting go of any turn)."""
        if self._pid == os.getpid():
            os.close(self._fd)
            self._pid = 0
            assert self._waiter is not None
            self._waiter.shutdown(wait=False, cancel_futures=True)

    def _take(self, fd: int, timeout: float) -> None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            if timeout <= 0:
                raise _busy() from None
        assert self._waiter is not None
        taking: Future[None] = self._waiter.submit(fcntl.lockf, fd, fcntl.LOCK_EX)
        try:
            taking.result(max(timeout, 0.0))
        except WaitedTooLong:
            if not taking.cancel():
                # Let the turn go when it comes (at once, should it have come just now).
                taking.add_done_callback(lambda _: fcntl.lockf(fd, fcntl.LOCK_UN))
            raise _busy() from None


def _busy() -> StorageBusyError:
    return StorageBusyError(
        f"the database stayed locked by other writes for {BUSY_TIMEOUT_MS // 1000} s"
    )


SYNC_MODES: Final = ("normal", "full")
"""SQLite ``synchronous`` settings offered: see "Durability" in README.md for what each survives."""


class SQLiteStorage(TreeStorage):
    """Accounts, values and templates in one SQLite file (WAL mode).

    ``blob_threshold`` is :class:`~.tree.TreeStorage`'s.
    """

    new_top_rows = _NEW_TOP_ROWS if sqlite3.sqlite_version_info >= (3, 38, 0) else None
    duplicate_errors = (sqlite3.IntegrityError,)

    def __init__(
        self, path: str, *, blob_threshold: int = BLOB_THRESHOLD, sync: str = "normal"
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        super().__init__(blob_threshold=blob_threshold)
        self._path = os.fspath(path)
        self._sync = sync
        self._local = threading.local()
        reset_after_fork(self)
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._turn = _WriterTurn(self._path + "-writer")
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpointing: Future[None] | None = None  # the checkpoint asked for last
        self._unchecked = 0  # rows this process's commits changed since its last checkpoint
        self.checkpoints = 0
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)
        with self._write() as conn:
            migrate(conn, MIGRATIONS, "SQLite")

    # connections and transactions

    def _after_fork(self) -> None:
        """In a forked child: none of the parent's connections (SQLite forbids using them)."""
        self._local = threading.local()
        self._checkpointer = None  # the parent's thread is not in the child
        self._checkpointing = None
        self._unchecked = 0

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        A connection is never used in a process other than the one that
        opened it: a forked child starts without any (:meth:`_after_fork`).
        """
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(BUSY_TIMEOUT_MS)
            self._local.conn = conn
            self._local.cache = OrderedDict()
            self._local.versions = conn.cursor()
            self._local.version = None
            self._local.wal = None
            self._local.mapped = False  # tried at the first read (the -shm file exists by then)
            self._local.header = None
        return conn

    def _conn_now(self) -> tuple[sqlite3.Connection, _Deadline]:
        """This thread's connection for writes that must not wait, and its deadline: busy at
        once, not after :data:`BUSY_TIMEOUT_MS`, and interrupted once past the deadline
        (see :meth:`commit_group_now`)."""
        found: tuple[sqlite3.Connection, _Deadline] | None = getattr(self._local, "now", None)
        if found is None:
            self._conn()  # the thread's state, which every commit updates
            deadline = _Deadline()
            conn = self._connect(0)
            conn.set_progress_handler(deadline, _DEADLINE_STEPS)
            found = self._local.now = (conn, deadline)
        return found

    def _connect(self, busy_ms: int) -> sqlite3.Connection:
        """A new connection, waiting up to ``busy_ms`` for a lock; closed by :meth:`close`."""
        conn = sqlite3.connect(
            self._path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        _use_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # see the module's notes
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def commit_group_now(self, writes: Sequence[Write]) -> list[Committed | Exception] | None:
        """:meth:`commit_group` if the write lock is free this moment and a commit does not
        wait on the disk (``synchronous=NORMAL``); else None, having done nothing.

        A group still at work after :data:`NOW_SECONDS` (a small request that
        deletes a large value, say) is interrupted and rolled back: None, and
        :meth:`commit_group` does it in a thread. So is a group whose commit
        fails otherwise than by refusing a write, each write then committed alone.
        """
        if self._sync != "normal":
            return None
        try:
            with self._write(wait=False) as conn:
                return self._commit_now(conn, writes)
        except REFUSALS as exc:  # one write, refused: rolled back with the transaction
            return [exc]
        except (StorageBusyError, _GaveUp):  # rolled back, or never begun
            return None

    def _commit_now(
        self, conn: sqlite3.Connection, writes: Sequence[Write]
    ) -> list[Committed | Exception]:
        """The group's work in :meth:`commit_group_now`'s transaction, before its ``COMMIT``:
        :class:`_GaveUp` for anything but a refusal or the database's own failure."""
        deadline = self._conn_now()[1]
        deadline.at = time.monotonic() + NOW_SECONDS
        try:
            if len(writes) > 1:
                return self._commit_each(conn, writes)
            account, operations, checks, key_digest = writes[0]
            check_operations(operations)
            return [self._commit_in(conn, account, operations, checks, key_digest)]
        except (StorageError, StorageUnavailableError):
            raise
        except Exception as exc:
            if len(writes) == 1 and isinstance(exc, REFUSALS):
                raise  # the one write's own outcome
            # Interrupted past the deadline, or a write of a run refused (commit_group
            # then commits each write alone).
            raise _GaveUp from exc
        finally:
            deadline.at = math.inf  # COMMIT and ROLLBACK run to their end

    @contextmanager
    def _write(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue on the lock.

        Writers of this database in other processes queue first for the
        writer's turn (:class:`_WriterTurn`), so the lock passes between them
        without SQLite's sleeps. Without ``wait``, :class:`StorageBusyError` at
        once if the turn or the lock is taken.
        """
        with _translated(), self._turn.held(BUSY_TIMEOUT_MS / 1000 if wait else 0):
            conn = self._conn() if wait else self._conn_now()[0]
            conn.execute("BEGIN IMMEDIATE")
            changes = conn.total_changes
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) may leave the transaction open, or not.
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                # This connection's own commits leave data_version as it was.
                self._local.cache.clear()
                self._local.header = None
            # Counted holding the turn, which one thread of the process holds at a time.
            self._unchecked += conn.total_changes - changes
            # One checkpoint at a time: rows changed while one runs ask for the next.
            running = self._checkpointing is not None and not self._checkpointing.done()
            if self._unchecked >= CHECKPOINT_ROWS and not running:
                self._unchecked = 0
                if self._checkpointer is None:
                    self._checkpointer = ThreadPoolExecutor(
                        1, thread_name_prefix="kvpio-checkpoint"
                    )
                self._checkpointing = self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file, in the checkpoint thread."""
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:  # a full disk, say: the next one tries again
            return
        self.checkpoints += 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction, so the statements of a read see one snapshot."""
        with _translated():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def check(self, *, full: bool = True, seconds: float | None = None) -> list[str]:
        """SQLite's own consistency check of the file: one line per problem, ``[]`` if sound.

        ``full`` runs ``PRAGMA integrity_check``, else the faster ``quick_check``
        (page and b-tree structure, no index contents). ``seconds`` bounds the
        time taken: past it the check stops with ``TimeoutError``.
        """
        conn = self._conn()
        deadline = None if seconds is None else time.monotonic() + seconds
        if deadline is not None:
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        try:
            rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check")
            text = "\n".join(str(row[0]) for row in rows.fetchall())
        except sqlite3.OperationalError as exc:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the check took longer than {seconds} s") from None
            return [str(exc)]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        finally:
            conn.set_progress_handler(None, 0)
        if text == "ok":
            return []
        return [line for line in text.splitlines() if line and not line.startswith("***")]

    def ready(self) -> None:
        """Take the write lock and let it go: the file is there, writable and not stuck."""
        with self._write():
            pass

    def backup(self, destination: str) -> None:
        """Copy the whole database, as of one moment, into the new file ``destination``.

        SQLite's online backup in one step: it reads one snapshot, which in
        WAL mode never blocks writers (a stepwise backup restarts whenever
        another connection writes, so under steady writes it may never end).
        The copy is made beside ``destination`` and renamed into place, so a
        file at ``destination`` is always a whole backup.
        """
        if os.path.exists(destination):
            raise FileExistsError(f"{destination} exists")
        partial = f"{destination}.partial-{os.getpid()}"
        target = sqlite3.connect(partial)
        try:
            self._conn().backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
        except BaseException:
            target.close()
            os.unlink(partial)
            raise
        target.close()
        os.replace(partial, destination)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.shutdown(wait=True, cancel_futures=True)
            self._checkpointer = self._checkpointing = None
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._turn.close()

    def read(self, account: str, path: Path) -> tuple[str | None, int]:
        self._conn()  # this thread's connection, and with it the cache and the cursor below
        local = self._local
        cache: OrderedDict[tuple[str, Path], tuple[str | None, int]] = local.cache
        key = (account, path)
        wal: mmap.mmap | None = local.wal
        # Read before any statement below, so it is never newer than what that statement sees.
        header = None if wal is None else wal[:_WAL_HEADER]
        if cache and ((header is not None and header == local.header) or self._current(header)):
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                self.read_cache_hits += 1
                return found
        self.read_cache_misses += 1
        with self._read() as conn:
            version = local.versions.execute(_DATA_VERSION).fetchone()[0]
            if version != local.version:
                cache.clear()
                local.version = version
                local.header = None  # commits may have come between it and this snapshot
            else:
                local.header = header
            revision = self._revision(conn, account)
            text = self._get(conn, account, path) if path else self._get_all(conn, account)
        if not local.mapped:
            local.mapped = True
            local.wal = _map_wal_header(self._path)
        if text is None or len(text) <= self._threshold:
            cache[key] = (text, revision)
            if len(cache) > READ_CACHE_ENTRIES:
                cache.popitem(last=False)
        return text, revision

    def _current(self, header: bytes | None) -> bool:
        """Whether this connection's cached entries are what a read would see now.

        Outside a transaction, data_version is that of the latest commit: if it is
        the one the entries were read under, they are. ``header`` (the WAL index
        header, read before asking) is then kept as describing them.
        """
        local = self._local
        if local.versions.execute(_DATA_VERSION).fetchone()[0] != local.version:
            return False
        local.header = header
        return True
