"""Storage backends behind one interface; :func:`open_storage` picks one by URL."""

from __future__ import annotations

from .base import (
    Account,
    AccountExistsError,
    Storage,
    StorageBusyError,
    StorageError,
    StorageFullError,
    UnknownAccountError,
)
from .memory import MemoryStorage

__all__ = [
    "Account",
    "AccountExistsError",
    "MemoryStorage",
    "Storage",
    "StorageBusyError",
    "StorageError",
    "StorageFullError",
    "UnknownAccountError",
    "open_storage",
]


def open_storage(location: str, *, sync: str = "normal") -> Storage:
    """Open ``memory:`` or a SQLite database file (a path or ``sqlite:///path``).

    ``sync`` is SQLite's ``synchronous`` setting, ``normal`` or ``full``.
    """
    if location == "memory:":
        return MemoryStorage()
    from .sqlite import SQLiteStorage

    return SQLiteStorage(location.removeprefix("sqlite://"), sync=sync)
