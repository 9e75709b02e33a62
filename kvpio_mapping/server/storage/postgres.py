"""PostgreSQL for the storage: one database that many ``kvpio serve`` hosts share.

:class:`Database` owns the connections (a ``psycopg_pool`` pool) and runs
every storage call as one transaction through :meth:`Database.transaction`:

- a write runs at READ COMMITTED; the storage's first statement in it
  raises the account's revision, and that row lock serialises the writes
  of one account across every host while writes to other accounts go on;
- a read runs at REPEATABLE READ, READ ONLY, so its statements see one
  snapshot;
- a serialization failure or a deadlock (SQLSTATE 40001, 40P01; CockroachDB
  and YugabyteDB report conflicts the same way) runs the transaction again,
  at most :data:`MAX_ATTEMPTS` times in all, after a short random pause;
- a lost connection (the server restarting, the network failing) raises
  :class:`~.base.StorageUnavailableError`: the transaction did not commit,
  or, if the connection broke during the commit itself, may have; the pool
  replaces broken connections before handing them out again.

Nothing relies on advisory locks or LISTEN/NOTIFY, which the distributed
PostgreSQL-compatible databases lack or stub.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Final, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ...paths import Path
from .base import (
    CHANGES_BATCH,
    AccountExistsError,
    AccountRecord,
    Changes,
    Check,
    Committed,
    Operation,
    StorageUnavailableError,
    Write,
    new_key,
)
from .schema import Migration, migrate
from .tree import (
    ARRAY,
    BLOB,
    BLOB_THRESHOLD,
    OBJECT,
    TABLE_COLUMNS,
    TreeStorage,
    count_children,
)

MAX_ATTEMPTS: Final = 5
"""Runs of one transaction, the first included, before a conflict is raised."""

POOL_SIZE: Final = 12
"""Most connections one storage (one server worker) holds: its read threads (8) and write
threads (4) each get one without waiting; the pool opens them as needed."""

READ_CACHE_ENTRIES: Final = 1024
"""Answers of :meth:`PostgresStorage.read` one storage (one server worker) keeps."""

CONNECT_TIMEOUT: Final = 5.0
"""Seconds a call waits for a connection before the database counts as unavailable."""

_RETRIED: Final = (errors.SerializationFailure, errors.DeadlockDetected)
_CREATE_RACE: Final = (errors.UniqueViolation, errors.DuplicateObject, errors.DuplicateTable)
_SHUTTING_DOWN: Final = ("57P01", "57P02", "57P03")
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or not yet up."""

_SCHEMA: Final = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    key_digest TEXT NOT NULL UNIQUE,
    reads BIGINT NOT NULL DEFAULT 0,
    revision BIGINT NOT NULL DEFAULT 0,
    log_start BIGINT NOT NULL DEFAULT 0,
    incarnation BIGSERIAL NOT NULL
);
CREATE TABLE nodes (
    account TEXT NOT NULL,
    path BYTEA NOT NULL,
    parent BYTEA NOT NULL,
    pos BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    label TEXT NOT NULL,
    body TEXT,
    size BIGINT NOT NULL,
    PRIMARY KEY (account, path)
);
CREATE INDEX nodes_children ON nodes (account, parent, pos);
CREATE TABLE members (
    account TEXT NOT NULL,
    path BYTEA NOT NULL,
    run BYTEA NOT NULL,
    PRIMARY KEY (account, path)
);
CREATE TABLE changes (
    account TEXT NOT NULL,
    revision BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    path BYTEA NOT NULL,
    body TEXT,
    PRIMARY KEY (account, revision, seq)
);
CREATE TABLE templates (
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    pos BIGINT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (account, name)
)
"""

T = TypeVar("T")


def _create_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Schema version 1: the tables of SQLite's layout, with PostgreSQL's types.

    ``incarnation`` numbers the creations of accounts, so a read cache can
    tell an account from one deleted and made again under its id, whose
    revisions count from 0 again.
    """
    for statement in _SCHEMA.split(";"):
        conn.execute(statement)


def _add_children(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Schema version 2: each split container and account keeps its count of children."""
    conn.execute("ALTER TABLE nodes ADD COLUMN children BIGINT NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE accounts ADD COLUMN children BIGINT NOT NULL DEFAULT 0")
    count_children(_Connection(conn))


def _compress_with_lz4(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Schema version 3: values' texts compress with LZ4 rather than pglz, where the server
    has it (PostgreSQL 14 and later, built with it; else they stay as they were).

    pglz took half of a 10 MB document's write; LZ4 compresses several times
    as fast, and values already stored keep their compression until rewritten.
    """
    if conn.info.server_version < 140000:
        return
    try:
        with conn.transaction():  # a savepoint: a server without LZ4 refuses it
            conn.execute("ALTER TABLE nodes ALTER COLUMN body SET COMPRESSION lz4")
    except errors.FeatureNotSupported:
        pass


MIGRATIONS: Final[tuple[Migration, ...]] = (_create_tables, _add_children, _compress_with_lz4)
"""The schema's versions, in order (see :mod:`.schema`); append, never edit, one."""


class Database:
    """A pool of connections to one PostgreSQL database, upgraded to the code's schema."""

    def __init__(
        self, url: str, *, max_size: int = POOL_SIZE, timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self.url = url
        self._pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=timeout,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout:
            self._pool.close()
            raise StorageUnavailableError(f"cannot connect to {_shown(url)}") from None
        try:
            # Hosts creating the tables at once collide on the catalog: the losers run again.
            self.transaction(self._migrate, write=True, retry_on=_CREATE_RACE)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
        return migrate(conn, MIGRATIONS, "PostgreSQL", lock=" FOR UPDATE")

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A pooled connection, in autocommit; an unreachable database raised as unavailable."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if not _unavailable(exc):
                raise
            raise StorageUnavailableError(
                f"the database {_shown(self.url)} is unavailable: {exc}"
            ) from exc

    @contextmanager
    def session(self, *, write: bool) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """One transaction on a pooled connection, committed when the block ends.

        Its ``BEGIN`` names the isolation level (one round trip). Runs once:
        :meth:`retrying` runs the caller again on a conflict. Raises
        :class:`~.base.StorageUnavailableError` when the database cannot be
        reached or the connection breaks.
        """
        with self._connection() as conn:
            conn.isolation_level = (
                IsolationLevel.READ_COMMITTED if write else IsolationLevel.REPEATABLE_READ
            )
            conn.read_only = not write
            with conn.transaction():
                yield conn

    def fetchone(self, sql: str, parameters: Sequence[Any]) -> tuple[Any, ...] | None:
        """The first row of one statement, run on its own (no transaction around it)."""
        with self._connection() as conn:
            return conn.execute(sql, parameters).fetchone()

    @staticmethod
    def retrying(
        call: Callable[[], T], retry_on: type[Exception] | tuple[type[Exception], ...] = ()
    ) -> T:
        """``call()``, run again after a serialization failure or a deadlock.

        ``retry_on`` adds exceptions that also run it again (say, a unique
        violation from a concurrent first insert). The last attempt's error
        is raised.
        """
        retried = _RETRIED + (retry_on if isinstance(retry_on, tuple) else (retry_on,))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return call()
            except retried:
                if attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
        raise AssertionError("unreachable")

    def transaction(
        self,
        work: Callable[[psycopg.Connection[tuple[object, ...]]], T],
        *,
        write: bool,
        retry_on: type[Exception] | tuple[type[Exception], ...] = (),
    ) -> T:
        """``work(conn)`` in one :meth:`session`, run again as :meth:`retrying` says."""

        def once() -> T:
            with self.session(write=write) as conn:
                return work(conn)

        return self.retrying(once, retry_on)

    def close(self) -> None:
        """Close every connection."""
        self._pool.close()


def _unavailable(exc: Exception) -> bool:
    """Whether ``exc`` says the database cannot be reached (not that a statement failed)."""
    if not isinstance(exc, psycopg.Error):
        return True
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SHUTTING_DOWN


def _shown(url: str) -> str:
    """``url`` without a password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host, port, name = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"postgresql://{host}:{port}/{name}" if port else f"postgresql://{host}/{name}"


@lru_cache(maxsize=256)
def _translated(sql: str) -> str:
    """The tree code's SQLite statement ``sql`` as PostgreSQL reads it.

    Placeholders become ``%s``, the empty blob a ``bytea``, and the byte length
    of a text ``octet_length``; nothing else in that SQL differs between the two.
    """
    sql = sql.replace("length(CAST(label AS BLOB))", "octet_length(label)")
    return sql.replace("x''", "'\\x'::bytea").replace("?", "%s")


_NEW_TOP_ROWS: Final = (
    "INSERT INTO nodes (account, path, parent, pos, kind, label, body, size, children)"
    f" SELECT %s, convert_to(key, 'UTF8'), '\\x'::bytea, %s + n, {BLOB}, '\"' || key || '\":',"
    " body, octet_length(body), 0 FROM (SELECT key, n, CASE json_typeof(value)"
    " WHEN 'number' THEN value::text::numeric::text ELSE value::text END AS body"
    " FROM json_each(%s::json) WITH ORDINALITY AS j (key, value, n)) AS rows"
)
""":attr:`.tree.TreeStorage.new_top_rows`: a ``json`` value's text is as written (``-0`` made
``0`` as :mod:`json` reads it), and ``json_each`` keeps the text's order and its repeats."""


def _stored(source: str) -> str:
    """A template source as its table keeps it: JSON text (PostgreSQL text cannot hold NUL)."""
    return json.dumps(source, ensure_ascii=False)


_COLUMN_TYPES: Final = {
    "account": "text",
    "path": "bytea",
    "parent": "bytea",
    "pos": "int8",
    "kind": "int2",
    "label": "text",
    "body": "text",
    "size": "int8",
    "children": "int8",
    "run": "bytea",
}
"""The types of the columns the tree code loads with ``COPY`` (its binary format needs them)."""

COPY_FROM: Final = 64
"""New rows from which a write loads them with ``COPY`` rather than ``executemany``: at 3,900
rows of a 10 MB document, in half the time."""

_REVISION: Final = "SELECT revision, incarnation FROM accounts WHERE id = %s"


class _Connection:
    """A psycopg connection in one transaction, taking the tree code's SQLite statements."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self._conn.execute(_translated(sql), parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self._conn.cursor()
        cursor.executemany(_translated(sql), rows)
        return cursor

    def copy(self, table: str, rows: Iterable[Sequence[Any]]) -> None:
        """Insert ``rows`` (of :data:`~.tree.TABLE_COLUMNS`) into ``table`` with one binary
        ``COPY``."""
        columns = TABLE_COLUMNS[table]
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with self._conn.cursor().copy(statement) as copy:
            copy.set_types([_COLUMN_TYPES[column] for column in columns])
            for row in rows:
                copy.write_row(row)


class PostgresStorage(TreeStorage):
    """Accounts, values and templates in one PostgreSQL database that many hosts share.

    The tree layout, and the code that plans and renders its rows, are
    :class:`~.tree.TreeStorage`'s, shared with SQLite; this class supplies the connections,
    the transactions (see :class:`Database`), retries and the read cache.
    Each write starts by raising the account's revision: that row lock
    serialises one account's writes across hosts. A read's answer is cached
    under the account's revision and incarnation read in the same snapshot,
    so an entry is used only while the account is still at that revision.
    """

    reads_block = True
    write_threads = 4
    new_top_rows = _NEW_TOP_ROWS
    duplicate_errors = (errors.UniqueViolation,)

    def __init__(self, url: str, *, blob_threshold: int = BLOB_THRESHOLD) -> None:
        super().__init__(blob_threshold=blob_threshold)
        self._db = Database(url)
        self._cache: OrderedDict[tuple[str, Path], tuple[str | None, int, int | None]] = (
            OrderedDict()
        )
        self._cache_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The database's URL, as given."""
        return self._db.url

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._db.session(write=True) as conn:
            yield _Connection(conn)

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._db.session(write=False) as conn:
            yield _Connection(conn)

    def _insert_new(self, conn: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        if len(rows) < COPY_FROM:
            super()._insert_new(conn, table, rows)
        else:
            conn.copy(table, rows)

    def check(self, *, full: bool = True, seconds: float | None = None) -> list[str]:
        """Problems the tree's rows show (PostgreSQL checks its own pages): ``[]`` if sound.

        Every stored node must hang below a stored split container, or be
        at the top. ``full`` is accepted for SQLite's sake; ``seconds``
        bounds the time taken: past it the check stops with ``TimeoutError``.
        """
        try:
            with self._read() as conn:
                if seconds is not None:
                    conn.execute(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")
                rows = self._orphans(conn)
        except errors.QueryCanceled:
            raise TimeoutError(f"the check took longer than {seconds} s") from None
        return [f"account {account!r}: row {bytes(path)!r} has no parent" for account, path in rows]

    @staticmethod
    def _orphans(conn: Any) -> list[Any]:
        """(account, path) of up to 100 rows whose parent is not a stored split container."""
        return list(
            conn.execute(
                "SELECT n.account, n.path FROM nodes AS n WHERE n.parent != x'' AND NOT EXISTS"
                " (SELECT 1 FROM nodes AS p WHERE p.account = n.account AND p.path = n.parent"
                " AND p.kind IN (?, ?)) LIMIT 100",
                (OBJECT, ARRAY),
            ).fetchall()
        )

    def backup(self, destination: str) -> None:
        """Refused: a PostgreSQL database is backed up with ``pg_dump`` or ``kvpio db copy``."""
        raise OSError("back up a PostgreSQL database with pg_dump, or kvpio db copy it")

    def close(self) -> None:
        self._db.close()

    # writes: run again on a serialization failure or a deadlock

    def create_account(self, id: str, email: str, api_key: str | None = None) -> str:
        key = api_key if api_key is not None else new_key()
        try:
            return self._db.retrying(
                lambda: super(PostgresStorage, self).create_account(id, email, key)
            )
        except errors.UniqueViolation:
            raise AccountExistsError(f"account {id!r} or its API key exists already") from None

    def ensure_account(self, api_key: str, id: str = "default", email: str = "") -> str:
        # Hosts creating the same account at once: the losers find it on their next run.
        return self._db.retrying(
            lambda: super(PostgresStorage, self).ensure_account(api_key, id, email),
            errors.UniqueViolation,
        )

    def delete_account(self, id: str) -> bool:
        return self._db.retrying(lambda: super(PostgresStorage, self).delete_account(id))

    def restore_account(
        self, record: AccountRecord, bucket: Mapping[str, Any], templates: Sequence[tuple[str, str]]
    ) -> None:
        stored = [(name, _stored(source)) for name, source in templates]
        try:
            self._db.retrying(
                lambda: super(PostgresStorage, self).restore_account(record, bucket, stored)
            )
        except errors.UniqueViolation:
            raise AccountExistsError(
                f"account {record.id!r} or its API key exists already"
            ) from None

    def add_reads(self, counts: Mapping[str, int]) -> None:
        # One order for every host, so two batches never wait on each other's rows.
        ordered = dict(sorted(counts.items()))
        self._db.retrying(lambda: super(PostgresStorage, self).add_reads(ordered))

    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        return self._db.retrying(
            lambda: super(PostgresStorage, self).commit(account, operations, checks, key_digest)
        )

    def commit_group(self, writes: Sequence[Write]) -> list[Committed | Exception]:
        # One order of accounts for every host, so two groups never wait on each other's rows;
        # the sort is stable, so one account's writes keep their order.
        order = sorted(range(len(writes)), key=lambda index: writes[index].account)
        outcomes = super().commit_group([writes[index] for index in order])
        ordered: list[Committed | Exception] = list(outcomes)
        for index, outcome in zip(order, outcomes, strict=True):
            ordered[index] = outcome
        return ordered

    def clear(self, account: str) -> int:
        return self._db.retrying(lambda: super(PostgresStorage, self).clear(account))

    def set_template(self, account: str, name: str, source: str) -> None:
        stored = _stored(source)
        self._db.retrying(lambda: super(PostgresStorage, self).set_template(account, name, stored))

    def get_template(self, account: str, name: str) -> str | None:
        stored = super().get_template(account, name)
        return None if stored is None else str(json.loads(stored))

    def delete_template(self, account: str, name: str) -> bool:
        return self._db.retrying(
            lambda: super(PostgresStorage, self).delete_template(account, name)
        )

    # reads

    def changes(self, account: str, since: int, limit: int = CHANGES_BATCH) -> Changes:
        answer = super().changes(account, since, limit)
        return answer._replace(
            changes=[
                change._replace(text=str(json.loads(change.text)))
                if change.kind == "template" and change.text is not None
                else change
                for change in answer.changes
            ]
        )

    def read(self, account: str, path: Path) -> tuple[str | None, int]:
        key = (account, path)
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None:
            # One statement says whether the entry is still the account's state.
            row = self._db.fetchone(_REVISION, (account,))
            if row is not None and cached[1:] == (int(row[0]), int(row[1])):
                with self._cache_lock:
                    self._cache.move_to_end(key)
                    self.read_cache_hits += 1
                return cached[0], cached[1]
        self.read_cache_misses += 1
        with self._read() as conn:
            row = conn.execute(_REVISION, (account,)).fetchone()
            revision, incarnation = (0, None) if row is None else (int(row[0]), int(row[1]))
            text = self._get(conn, account, path) if path else self._get_all(conn, account)
        if text is None or len(text) <= self._threshold:
            with self._cache_lock:
                self._cache[key] = (text, revision, incarnation)
                self._cache.move_to_end(key)
                if len(self._cache) > READ_CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return text, revision
