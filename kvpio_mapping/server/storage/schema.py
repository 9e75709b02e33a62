"""Schema versions of the SQL backends: upgrade a database in place, refuse a newer one.

A database records its schema version in the one-row table ``kvpio_schema``.
Each SQL backend lists its migrations in order; migration *n* takes a
database from version *n - 1* to *n*, so the code's version is the length of
the list. A database without the table is version 0: a new one, or one made
before versions were recorded (the first migration of each backend brings
both to the current layout). A database whose version is above the code's
was made by a newer release: it is refused with :class:`SchemaTooNewError`
rather than read with rules that may no longer hold.

:func:`migrate` runs inside the caller's write transaction; a migration
that fails leaves the database at the version it had. Processes opening one
database at once upgrade it once: SQLite's write lock serialises them, and
on PostgreSQL the version row is read ``FOR UPDATE`` (a process that races
another to create the table or the row gets a unique violation, and runs
the transaction again). The statements here are plain SQL that SQLite and
PostgreSQL read alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class SchemaTooNewError(RuntimeError):
    """The database was made by a newer release than this code."""


class Cursor(Protocol):
    """What :func:`migrate` reads from a statement."""

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What :func:`migrate` needs of a DB-API connection: ``execute`` of plain SQL."""

    def execute(self, sql: str, /) -> Cursor: ...


Migration = Callable[[Any], None]
"""One step: given the backend's connection, take the schema up by one version."""


def migrate(
    conn: Connection, migrations: Sequence[Migration], backend: str, *, lock: str = ""
) -> int:
    """Bring the database to ``len(migrations)``, the code's version; the version it had.

    ``lock`` is appended to the read of the version row (`` FOR UPDATE`` on
    PostgreSQL). Raises :class:`SchemaTooNewError`, changing nothing, if the
    database is newer.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kvpio_schema"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
    )
    rows = conn.execute("SELECT version FROM kvpio_schema" + lock).fetchall()
    if not rows:
        conn.execute("INSERT INTO kvpio_schema (id, version) VALUES (1, 0)")
    found = int(rows[0][0]) if rows else 0
    known = len(migrations)
    if found > known:
        raise SchemaTooNewError(
            f"the {backend} database has schema version {found}, newer than this"
            f" kvpio-mapping knows ({known}): upgrade kvpio-mapping to open it"
        )
    for version in range(found + 1, known + 1):
        migrations[version - 1](conn)
        conn.execute(f"UPDATE kvpio_schema SET version = {version}")
    return found
