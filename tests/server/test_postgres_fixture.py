"""The test PostgreSQL server: found, started, restarted, external, and loud when missing."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from kvpio_mapping import testing
from kvpio_mapping.testing import PostgresUnavailableError, RunningPostgres


def test_fresh_database_takes_connections_and_writes(kvpio_postgres_db: str) -> None:
    with psycopg.connect(kvpio_postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        assert conn.execute("SELECT sum(n) FROM t").fetchone() == (3,)


def test_each_test_gets_its_own_empty_database(kvpio_postgres_db: str) -> None:
    with psycopg.connect(kvpio_postgres_db) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_server_listens_on_loopback_only(kvpio_postgres: RunningPostgres) -> None:
    assert kvpio_postgres.url.startswith("postgresql://postgres@127.0.0.1:")
    if kvpio_postgres.data_dir is not None:
        assert kvpio_postgres.psql("SHOW listen_addresses").strip() == "127.0.0.1"


@pytest.mark.slow
def test_committed_rows_survive_a_restart_and_an_immediate_stop() -> None:
    server = testing.start_postgres()
    try:
        url = server.create_database()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (7)")
        server.restart("immediate")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT n FROM t").fetchone() == (7,)
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        server.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT n FROM t").fetchone() == (7,)
    finally:
        server.destroy()
    assert server.data_dir is not None
    assert not os.path.exists(server.data_dir)


def test_missing_binaries_fail_and_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    monkeypatch.setattr(testing, "POSTGRES_BINDIRS", os.path.join(tmp_path, "*", "bin"))
    assert testing.postgres_bindir() is None
    with pytest.raises(PostgresUnavailableError, match="apt-get install postgresql"):
        testing.start_postgres()


def test_the_environment_variable_names_an_external_server(
    kvpio_postgres: RunningPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(testing.POSTGRES_ENV, kvpio_postgres.url)
    with testing.run_postgres() as external:
        assert external.url == kvpio_postgres.url
        assert external.data_dir is None
        url = external.create_database()
        external.drop_database(url)


def test_an_unreachable_external_server_fails_and_says_so(
    monkeypatch: pytest.MonkeyPatch, closed_url: str
) -> None:
    port = closed_url.rsplit(":", 1)[1]
    monkeypatch.setenv(testing.POSTGRES_ENV, f"postgresql://postgres@127.0.0.1:{port}/postgres")
    unreachable = pytest.raises(PostgresUnavailableError, match=testing.POSTGRES_ENV)
    with unreachable, testing.run_postgres():
        pass


def test_only_test_databases_are_dropped(kvpio_postgres: RunningPostgres) -> None:
    with pytest.raises(ValueError, match="not a test database"):
        kvpio_postgres.drop_database(kvpio_postgres.url)


def test_makefile_installs_the_binaries_only_when_missing() -> None:
    answer = subprocess.run(
        ["make", "-n", "postgres"], capture_output=True, text=True, cwd=_root(), timeout=30
    )
    assert "apt-get install -y -q postgresql" in answer.stdout
    assert "postgres_bindir() is None" in answer.stdout


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
