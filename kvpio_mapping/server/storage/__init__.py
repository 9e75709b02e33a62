"""Storage backends behind one interface; :func:`open_storage` picks one by URL."""

from __future__ import annotations

from typing import Final

from .base import (
    Account,
    AccountExistsError,
    InvalidAccountError,
    Storage,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnknownAccountError,
)
from .memory import MemoryStorage

__all__ = [
    "POSTGRES_SCHEMES",
    "Account",
    "AccountExistsError",
    "InvalidAccountError",
    "MemoryStorage",
    "Storage",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "UnknownAccountError",
    "open_storage",
]


POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
"""URL prefixes that name a PostgreSQL database (libpq's two spellings)."""


def open_storage(location: str, *, sync: str = "normal") -> Storage:
    """Open ``memory:``, a PostgreSQL URL, or a SQLite database file (a path or ``sqlite:///path``).

    ``sync`` is SQLite's ``synchronous`` setting, ``normal`` or ``full``.
    """
    if location == "memory:":
        return MemoryStorage()
    if location.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStorage

        return PostgresStorage(location)
    from .sqlite import SQLiteStorage

    return SQLiteStorage(location.removeprefix("sqlite://"), sync=sync)
