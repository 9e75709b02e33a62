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

import random
import time
from collections.abc import Callable
from typing import Final, TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import StorageUnavailableError
from .schema import Migration, migrate

MAX_ATTEMPTS: Final = 5
"""Runs of one transaction, the first included, before a conflict is raised."""

POOL_SIZE: Final = 8
"""Most connections one storage (one server worker) holds."""

CONNECT_TIMEOUT: Final = 5.0
"""Seconds a call waits for a connection before the database counts as unavailable."""

_RETRIED: Final = (errors.SerializationFailure, errors.DeadlockDetected)
_CREATE_RACE: Final = (errors.UniqueViolation, errors.DuplicateObject, errors.DuplicateTable)
_SHUTTING_DOWN: Final = ("57P01", "57P02", "57P03")
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or not yet up."""
_READ: Final = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_WRITE: Final = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"

_SCHEMA: Final = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    key_digest TEXT NOT NULL UNIQUE,
    reads BIGINT NOT NULL DEFAULT 0,
    revision BIGINT NOT NULL DEFAULT 0
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
    """Schema version 1: the tables of SQLite's layout, with PostgreSQL's types."""
    for statement in _SCHEMA.split(";"):
        conn.execute(statement)


MIGRATIONS: Final[tuple[Migration, ...]] = (_create_tables,)
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

    def transaction(
        self,
        work: Callable[[psycopg.Connection[tuple[object, ...]]], T],
        *,
        write: bool,
        retry_on: type[Exception] | tuple[type[Exception], ...] = (),
    ) -> T:
        """``work(conn)`` in one transaction, committed; run again on a conflict.

        ``retry_on`` adds exceptions that also run it again (say, a unique
        violation from a concurrent first insert). Raises
        :class:`~.base.StorageUnavailableError` when the database cannot be
        reached or the connection breaks.
        """
        retried = _RETRIED + (retry_on if isinstance(retry_on, tuple) else (retry_on,))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    conn.execute(_WRITE if write else _READ)
                    return work(conn)
            except retried:
                if attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if not _unavailable(exc):
                    raise
                raise StorageUnavailableError(
                    f"the database {_shown(self.url)} is unavailable: {exc}"
                ) from exc
        raise AssertionError("unreachable")

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
