"""A full disk: writes answer 507 with one log line, reads keep working.

The server runs on a small tmpfs mounted in a user namespace of its own, so
the disk really fills up; where user namespaces are not allowed the test
cannot build one and is skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from kvpio_mapping.testing import Api, RunningServer

DISK_BYTES = 3 * 2**20
_PREFIX = "kvpio serving on "


def _user_namespaces() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = [unshare, "--user", "--map-root-user", "--mount", "true"]
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


@pytest.fixture
def small_disk_server() -> Iterator[RunningServer]:
    if not _user_namespaces():
        pytest.skip("needs `unshare --user --mount` to give the server a small tmpfs")
    directory = tempfile.mkdtemp(prefix="kvpio-full-")
    disk = os.path.join(directory, "disk")
    os.mkdir(disk)
    db = os.path.join(disk, "kvpio.sqlite3")
    key = secrets.token_urlsafe(16)
    script = f'mount -t tmpfs -o size={DISK_BYTES} tmpfs "$1" && shift && exec "$@"'
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", disk]
    command += [sys.executable, "-m", "kvpio_mapping.server", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--db", db, f"--api-key={key}", "--workers", "1"]
    stderr_path = os.path.join(directory, "stderr.log")
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    url = line.removeprefix(_PREFIX).split()[0] if line.startswith(_PREFIX) else ""
    server = RunningServer(url, key, db, process, stderr_path)
    try:
        assert line.startswith(_PREFIX), server.stderr()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_full_disk_answers_507_logs_once_and_keeps_reads(
    small_disk_server: RunningServer,
) -> None:
    api = Api(small_disk_server.url, small_disk_server.api_key)
    assert api.post("/v1/bucket/kept", json="still here").status_code == 200
    chunk = '"' + secrets.token_hex(128 * 2**10) + '"'  # 256 KiB that do not compress
    statuses = []
    for index in range(4 * DISK_BYTES // len(chunk)):  # bounded: the disk fills well before
        answer = api.post(f"/v1/bucket/filler{index}", data=chunk)
        statuses.append(answer.status_code)
        if answer.status_code != 200:
            break
    assert statuses[-1] == 507, statuses
    assert set(statuses[:-1]) <= {200}
    assert "disk is full" in answer.json()["error"]
    for attempt in range(5):
        assert api.post(f"/v1/bucket/more{attempt}", data=chunk).status_code == 507
        assert api.get("/v1/bucket/kept").json() == "still here"
    assert api.get("/v1/bucket/filler0").status_code == 200
    logged = small_disk_server.stderr()
    assert logged.count("disk holding the database is full") == 1, logged
    assert "Traceback" not in logged
