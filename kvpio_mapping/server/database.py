"""Where the server's database is, and opening it without side effects nobody asked for.

A read (``kvpio accounts list``, ``kvpio db check``) never creates a
database, and only the standard location gets its directory made: elsewhere
a missing directory is most likely a typo, which a new empty database would
hide.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storage import Storage


def default_db() -> str:
    """``$KVPIO_DB``, else :func:`standard_db`."""
    return os.environ.get("KVPIO_DB") or standard_db()


def standard_db() -> str:
    """``${XDG_DATA_HOME:-~/.local/share}/kvpio/kvpio.sqlite3``, the one place made on demand."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "kvpio", "kvpio.sqlite3")


class DatabaseProblem(Exception):
    """Why a command cannot use its database, worded for the operator in one line."""


def is_url(location: str) -> bool:
    """Whether ``location`` names a database server (PostgreSQL), not a file."""
    from .storage import POSTGRES_SCHEMES

    return location.startswith(POSTGRES_SCHEMES)


def shown(location: str) -> str:
    """``location`` for messages: a server URL without its password."""
    if not is_url(location):
        return location
    from urllib.parse import urlsplit

    parts = urlsplit(location)
    if parts.password is None:
        return location
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def storage_errors() -> tuple[type[Exception], ...]:
    """What opening or first using a database raises when it cannot be used."""
    from .storage import StorageUnavailableError
    from .storage.schema import SchemaTooNewError

    found: tuple[type[Exception], ...] = (
        OSError,
        sqlite3.Error,
        SchemaTooNewError,
        StorageUnavailableError,
    )
    try:
        import psycopg
    except ImportError:
        return found
    return (*found, psycopg.Error)


def resolve_db(location: str | None) -> str:
    """The database a ``--db`` option names: ``memory:``, a server URL, or an absolute file path."""
    location = location or default_db()
    if location == "memory:" or is_url(location):
        return location
    return os.path.abspath(os.path.expanduser(location.removeprefix("sqlite://")))


def open_db(location: str, *, create: bool) -> Storage:
    """Open a resolved database; a new file only if ``create``, in an existing directory."""
    from .storage import open_storage

    if is_url(location):
        try:
            import psycopg_pool  # noqa: F401 - only to say what is missing
        except ImportError:
            raise DatabaseProblem(
                f"{shown(location)} needs the PostgreSQL driver:"
                " pip install 'kvpio-mapping[postgres]'"
            ) from None
    elif location != "memory:" and not os.path.exists(location):
        directory = os.path.dirname(location)
        if not create:
            raise DatabaseProblem(f"no database at {location}")
        if not os.path.isdir(directory):
            if location != standard_db():
                raise DatabaseProblem(f"the directory {directory} does not exist (check --db)")
            os.makedirs(directory, exist_ok=True)
    try:
        return open_storage(location)
    except storage_errors() as exc:
        raise DatabaseProblem(f"cannot open the database {shown(location)}: {exc}") from None


def damage_report(location: str, problems: list[str]) -> str:
    """One line saying a database is damaged, its first problem, and what to do."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    rescue = (
        "restore a backup"
        if is_url(location)
        else f"restore a backup or rescue the data with `sqlite3 {location} .recover`"
    )
    return (
        f"the database {location} is damaged: {problems[0]}{more}; see `kvpio db check --db"
        f" {location}`, then {rescue}"
    )
