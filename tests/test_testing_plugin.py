"""The pytest plugin and ``run_server`` leave nothing behind in the temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvpio_mapping import KVBucket
from kvpio_mapping.testing import run_server, start_server

USER_TEST = """
from kvpio_mapping import KVBucket

def test_counter(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    bucket["hits"] = 1
    assert bucket["hits"] == 1
"""


@pytest.mark.slow
def test_a_test_session_with_the_plugin_leaves_no_temporary_directory(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    (tmp_path / "test_user.py").write_text(USER_TEST)
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [path.name for path in scratch.iterdir() if path.name.startswith("kvpio-")] == []


def test_run_server_removes_its_directory_and_keeps_stderr() -> None:
    with run_server() as server:
        KVBucket(server.url, server.api_key)["k"] = 1
        assert Path(server.directory).is_dir()
    assert not Path(server.directory).exists()
    assert isinstance(server.stderr(), str)


def test_a_stopped_server_keeps_its_database_until_cleanup() -> None:
    server = start_server()
    KVBucket(server.url, server.api_key)["k"] = 1
    server.stop()
    try:
        with run_server(db=server.db, api_key=server.api_key) as again:
            assert KVBucket(again.url, again.api_key)["k"] == 1
    finally:
        server.cleanup()
    assert not Path(server.db).exists()
