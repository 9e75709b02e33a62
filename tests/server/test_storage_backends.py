"""The storage conformance suite (:mod:`kvpio_mapping.testing.storage`) on every backend.

Memory is the reference; PostgreSQL runs on the session's server, a fresh
database per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path as FilePath

import pytest

from kvpio_mapping.server.storage import MemoryStorage, Storage
from kvpio_mapping.server.storage.postgres import PostgresStorage
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
from kvpio_mapping.testing.storage import *  # noqa: F403


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: FilePath) -> Iterator[Storage]:
    if request.param == "memory":
        made: Storage = MemoryStorage()
    elif request.param == "postgres":
        made = PostgresStorage(request.getfixturevalue("kvpio_postgres_db"))
    else:
        made = SQLiteStorage(str(tmp_path / "db.sqlite3"))
    yield made
    made.close()
