"""Running `kvpio serve` for real: health probes, metrics, logs, TLS, API key files, backups.

Every case runs real ``kvpio serve`` processes on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from certs import self_signed
from prometheus_client.parser import text_string_to_metric_families

from kvpio_mapping.server import logs
from kvpio_mapping.server.serve import is_loopback
from kvpio_mapping.server.storage.sqlite import SQLiteStorage
from kvpio_mapping.testing import RunningServer, run_server

pytestmark = pytest.mark.slow


def samples(server: RunningServer, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples called ``name`` in one scrape of ``/metrics`` (on a new connection)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


# health


def test_healthz_and_readyz_answer_without_auth(kvpio_server: RunningServer) -> None:
    for probe, status in (("/healthz", "ok"), ("/readyz", "ready")):
        response = requests.get(kvpio_server.url + probe, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"status": status}
        assert response.headers["Cache-Control"] == "no-store"


def test_readyz_is_503_while_the_database_cannot_be_locked_for_writing(tmp_path: Path) -> None:
    with run_server(db=tmp_path / "kv.sqlite3") as server:
        blocker = sqlite3.connect(server.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            response = requests.get(server.url + "/readyz", timeout=15)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "took more than 2 s" in response.json()["error"]
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        deadline = time.monotonic() + 15
        while requests.get(server.url + "/readyz", timeout=15).status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.1)


# metrics


def test_metrics_of_a_two_worker_server_count_the_requests_of_both_workers() -> None:
    with run_server(workers=2) as server:
        deadline = time.monotonic() + 20  # the server announces itself once one worker serves
        while len(samples(server, "kvpio_worker_start_time_seconds")) != 2:
            assert time.monotonic() < deadline, "the second worker never started"
            time.sleep(0.1)
        auth = (server.api_key, "")
        requests.post(server.url + "/v1/bucket/n", json=1, auth=auth, timeout=10)
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            requests.get(server.url + "/v1/bucket/n", auth=auth, timeout=10)
        for _ in range(6):  # whichever worker answers the scrape, it counts every request
            counts = {
                (labels["route"], labels["method"], labels["status"]): value
                for labels, value in samples(server, "kvpio_http_requests_total")
            }
            assert counts[("/v1/bucket/{path:path}", "GET", "200")] == 40
            assert counts[("/v1/bucket/{path:path}", "POST", "200")] == 1
        count = [
            value
            for labels, value in samples(server, "kvpio_http_request_duration_seconds_count")
            if labels["route"] == "/v1/bucket/{path:path}"
        ]
        assert count == [41]
        deadline = time.monotonic() + 10  # pool and cache counts reach the metrics each second
        while (
            sum(
                value
                for labels, value in samples(server, "kvpio_cache_lookups_total")
                if labels["cache"] == "auth"
            )
            != 41
        ):
            assert time.monotonic() < deadline, "the auth cache lookups were not counted"
            time.sleep(0.2)


def test_metrics_of_the_render_pool_and_storage_errors_start_at_zero(
    kvpio_server: RunningServer,
) -> None:
    for name in ("kvpio_render_queue", "kvpio_render_kills_total", "kvpio_storage_errors_total"):
        assert [value for _, value in samples(kvpio_server, name)][:1] == [0.0]


def test_a_render_killed_for_taking_too_long_is_counted() -> None:
    with run_server(render_timeout=0.5) as server:
        auth = (server.api_key, "")
        spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        requests.post(server.url + "/v1/templates/spin", json=spin, auth=auth, timeout=10)
        rendered = requests.get(server.url + "/v1/templates/spin", auth=auth, timeout=10)
        assert "longer than 0.5 s" in rendered.text
        deadline = time.monotonic() + 10  # counts reach the metrics within a second
        while [value for _, value in samples(server, "kvpio_render_kills_total")] != [1.0]:
            assert time.monotonic() < deadline, "the kill was not counted"
            time.sleep(0.2)


# logs


def test_access_log_has_one_plain_line_per_request_without_the_api_key(tmp_path: Path) -> None:
    with run_server(db=tmp_path / "kv.sqlite3", options=["--access-log"]) as server:
        requests.get(server.url + "/v1/bucket/a%20b", auth=(server.api_key, ""), timeout=10)
        requests.get(server.url + "/v1/bucket/a", auth=("wrong", ""), timeout=10)
        proxied = {"X-Forwarded-For": "203.0.113.7"}  # a local reverse proxy says who asked
        requests.get(server.url + "/healthz", headers=proxied, timeout=10)
    lines = [line for line in server.stderr().splitlines() if "kvpio.access" in line]
    assert len(lines) == 4  # the start-up probe, and the three requests
    assert lines[1].endswith(
        "INFO kvpio.access: client=127.0.0.1 method=GET path=/v1/bucket/a b status=200"
        f" duration_ms={lines[1].split('duration_ms=')[1].split()[0]} account=default"
    )
    assert "status=404" in lines[2] and lines[2].endswith("account=-")
    assert "client=203.0.113.7 method=GET path=/healthz status=200" in lines[3]
    assert server.api_key not in server.stderr()


def test_access_log_in_json_lines(tmp_path: Path) -> None:
    options = ["--access-log", "--log-format", "json"]
    with run_server(db=tmp_path / "kv.sqlite3", options=options) as server:
        requests.post(server.url + "/v1/bucket/x", json=1, auth=(server.api_key, ""), timeout=10)
    lines = [json.loads(line) for line in server.stderr().splitlines()]
    write = [line for line in lines if line.get("method") == "POST"]
    assert len(write) == 1
    assert write[0]["logger"] == "kvpio.access" and write[0]["level"] == "info"
    assert (write[0]["path"], write[0]["status"], write[0]["account"]) == (
        "/v1/bucket/x",
        200,
        "default",
    )
    assert isinstance(write[0]["duration_ms"], float)


def test_no_access_log_by_default(kvpio_server: RunningServer) -> None:
    requests.get(kvpio_server.url + "/healthz", timeout=10)
    assert "kvpio.access" not in kvpio_server.stderr()


def _record_with_exception() -> logging.LogRecord:
    try:
        raise sqlite3.OperationalError("disk I/O error\nsecond line")
    except sqlite3.OperationalError:
        return logging.LogRecord(
            "kvpio.server",
            logging.ERROR,
            __file__,
            1,
            "unexpected error on %s",
            ("GET /x",),
            sys.exc_info(),
        )


def test_an_error_is_one_line_unless_at_debug_level() -> None:
    record = _record_with_exception()
    line = logs.PlainFormatter(traceback=False).format(record)
    assert "\n" not in line
    assert line.endswith(
        "ERROR kvpio.server: unexpected error on GET /x:"
        " OperationalError: disk I/O error second line"
    )
    assert "Traceback" in logs.PlainFormatter(traceback=True).format(record)
    as_json = json.loads(logs.JSONFormatter(traceback=False).format(record))
    assert as_json["exception"] == "OperationalError: disk I/O error second line"


# TLS and exposure


def test_tls_serves_https_that_verifies_against_its_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    options = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with run_server(db=tmp_path / "kv.sqlite3", workers=2, options=options) as server:
        assert server.url.startswith("https://127.0.0.1:")
        auth = (server.api_key, "")
        written = requests.post(
            server.url + "/v1/bucket/x", json=[1], auth=auth, verify=str(cert), timeout=10
        )
        assert written.status_code == 200
        assert requests.get(
            server.url + "/v1/bucket/x", auth=auth, verify=str(cert), timeout=10
        ).json() == [1]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.url + "/healthz", timeout=10)  # not in the default trust store
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(server.url.replace("https", "http") + "/healthz", timeout=10)


def test_tls_needs_a_certificate_and_its_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    for options, message in (
        (["--tls-cert", str(cert)], "kvpio serve: --tls-cert and --tls-key go together\n"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "cannot use the TLS certificate"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kvpio_mapping",
                "serve",
                "--port",
                "0",
                "--db",
                "memory:",
                *options,
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 2
        assert message in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_only_loopback_addresses_go_without_the_tls_warning(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_api_key_can_come_from_a_file_and_stays_out_of_the_command_line(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVPIO_")}
    env["KVPIO_APIKEY_FILE"] = str(key_file)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvpio_mapping",
            "serve",
            "--port",
            "0",
            "--workers",
            "1",
            "--db",
            str(tmp_path / "kv.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("kvpio serving on ")
        url = line.split()[3]
        assert b"from-a-file" not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
        answer = requests.get(url + "/v1/account", auth=("from-a-file", ""), timeout=10)
        assert answer.json()["id"] == "default"
    finally:
        process.terminate()
        process.communicate(timeout=20)


# durability and backups


def test_sync_full_is_the_setting_of_every_connection(tmp_path: Path) -> None:
    storage = SQLiteStorage(str(tmp_path / "kv.sqlite3"), sync="full")
    try:
        assert storage._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        storage.close()
    with pytest.raises(ValueError, match="sync must be one of normal, full, not 'off'"):
        SQLiteStorage(str(tmp_path / "other.sqlite3"), sync="off")


def test_a_server_with_sync_full_stores_writes(tmp_path: Path) -> None:
    with run_server(db=tmp_path / "kv.sqlite3", options=["--sync", "full"]) as server:
        auth = (server.api_key, "")
        assert requests.post(server.url + "/v1/bucket/x", json=1, auth=auth, timeout=10).ok
        assert requests.get(server.url + "/v1/bucket/x", auth=auth, timeout=10).json() == 1


def kvpio(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvpio_mapping", *argv], capture_output=True, text=True, timeout=60
    )


def test_a_backup_taken_during_writes_is_whole_and_consistent(tmp_path: Path) -> None:
    with run_server(db=tmp_path / "kv.sqlite3", workers=2) as server:
        auth = (server.api_key, "")
        stop = threading.Event()
        written: list[int] = []

        def write() -> None:
            session = requests.Session()
            for i in range(1, 5001):
                if stop.is_set():
                    return
                body = {"n": i, "items": list(range(i % 50))}
                session.post(server.url + "/v1/bucket/doc", json=body, auth=auth, timeout=10)
                session.post(server.url + "/v1/bucket/log", json=i, auth=auth, timeout=10)
                written.append(i)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while len(written) < 20:
                time.sleep(0.01)
            done = kvpio("db", "backup", str(tmp_path / "backup.sqlite3"), "--db", server.db)
            during = len(written)
        finally:
            stop.set()
            writer.join(30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{server.db} backed up to {tmp_path / 'backup.sqlite3'} (")
        assert during > 20 and not writer.is_alive()

    backup = str(tmp_path / "backup.sqlite3")
    assert sqlite3.connect(backup).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    storage = SQLiteStorage(backup)
    try:
        assert storage.check(full=True) == []
        doc = json.loads(storage.get("default", ("doc",)) or "null")
        log = json.loads(storage.get("default", ("log",)) or "null")
    finally:
        storage.close()
    assert doc["items"] == list(range(doc["n"] % 50))
    assert log in (doc["n"], doc["n"] - 1)  # the two writes of one round, or the first of them
    assert kvpio("db", "check", "--db", backup).returncode == 0


def test_a_backup_never_overwrites_a_file(tmp_path: Path) -> None:
    db = tmp_path / "kv.sqlite3"
    SQLiteStorage(str(db)).close()
    existing = tmp_path / "existing"
    existing.write_text("keep me")
    done = kvpio("db", "backup", str(existing), "--db", str(db))
    assert done.returncode == 1
    assert done.stderr == f"kvpio db backup: {existing} exists; a backup never overwrites a file\n"
    assert existing.read_text() == "keep me"
    assert not [name for name in os.listdir(tmp_path) if ".partial" in name]
