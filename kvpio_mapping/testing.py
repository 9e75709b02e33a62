"""A pytest plugin that runs a real ``kvpio serve`` for tests, yours included.

Installed with the package (entry point ``pytest11``), it provides:

- ``kvpio_server`` (session scope): one server process on a free port with a
  temporary SQLite database; ``.url``, ``.api_key`` and ``.db``.
- ``kvpio_account`` (function scope): a fresh, empty account on that server;
  ``.url`` and ``.api_key``. Each test gets its own isolated bucket.

Example, testing your own code against a real server::

    from kvpio_mapping import KVBucket

    def test_my_cache_warmer(kvpio_account):
        bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
        warm(bucket)
        assert bucket["status/ready"] is True

For a server of your own (other options, or to stop it yourself) use
:func:`run_server` as a context manager::

    with run_server(workers=2, max_body=1024) as server:
        ...

The server needs the ``server`` extra (falcon, uvicorn, jinja2).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from base64 import b64encode
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    import requests

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LINE_PREFIX = "kvpio serving on "


@dataclass
class RunningServer:
    """A ``kvpio serve`` process: its URL, an API key it knows, its database file."""

    url: str
    api_key: str
    db: str
    process: subprocess.Popen[str] = field(repr=False)
    stderr_path: str = field(repr=False, default="")
    directory: str = field(repr=False, default="")
    """The temporary directory of the server's stderr (and database, without ``db=``)."""
    _stderr: str = field(repr=False, default="")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        """What the server wrote to stderr so far (kept after it stopped)."""
        path = Path(self.stderr_path)
        return path.read_text(errors="replace") if path.is_file() else self._stderr

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (no shutdown at all)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def cleanup(self) -> None:
        """Remove the temporary directory (with the database, unless ``db=`` put it
        elsewhere), keeping stderr's text; :func:`run_server` does it on exit."""
        if self.directory:
            self._stderr = self.stderr()
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class TestAccount:
    """An account on a running server: where and with which key to reach it."""

    __test__ = False

    url: str
    api_key: str
    id: str


def _read_line(stream: IO[str], found: list[str], done: threading.Event) -> None:
    for line in stream:
        if line.startswith(_LINE_PREFIX):
            found.append(line[len(_LINE_PREFIX) :].split()[0])
            break
    done.set()


def start_server(
    db: str | os.PathLike[str] | None = None,
    *,
    api_key: str | None = None,
    workers: int = 1,
    max_body: int | None = None,
    render_timeout: float | None = None,
    header_timeout: float | None = None,
    max_connections: int | None = None,
    max_streams: int | None = None,
    max_account_streams: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = START_TIMEOUT,
    options: Sequence[str] = (),
) -> RunningServer:
    """Start ``kvpio serve`` and return once it answers; stop it with ``.stop()``, then
    ``.cleanup()`` removes its temporary directory.

    ``options`` are more ``kvpio serve`` arguments, e.g. ``["--access-log"]``.
    """
    directory = tempfile.mkdtemp(prefix="kvpio-")
    location = str(db) if db is not None else os.path.join(directory, "kvpio.sqlite3")
    key = api_key or secrets.token_urlsafe(16)
    command = [sys.executable, "-m", "kvpio_mapping.server", "serve", "--host", host]
    command += ["--port", str(port), "--db", location, f"--api-key={key}"]
    command += ["--workers", str(workers)]
    if max_body is not None:
        command += ["--max-body", str(max_body)]
    if render_timeout is not None:
        command += ["--render-timeout", str(render_timeout)]
    if header_timeout is not None:
        command += ["--header-timeout", str(header_timeout)]
    if max_connections is not None:
        command += ["--max-connections", str(max_connections)]
    if max_streams is not None:
        command += ["--max-streams", str(max_streams)]
    if max_account_streams is not None:
        command += ["--max-account-streams", str(max_account_streams)]
    command += options
    stderr_path = os.path.join(directory, "stderr.log")
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    found: list[str] = []
    done = threading.Event()
    assert process.stdout is not None
    threading.Thread(target=_read_line, args=(process.stdout, found, done), daemon=True).start()
    done.wait(timeout)
    server = RunningServer(
        found[0] if found else "", key, location, process, stderr_path, directory
    )
    if not found:
        if done.is_set():  # its output ended: it is exiting, let it finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)
        code = process.poll()
        server.stop()
        why = f"exited with code {code}" if code is not None else f"did not start in {timeout} s"
        server.cleanup()
        raise RuntimeError(f"kvpio serve {why}:\n{server.stderr()}")
    return server


class Api:
    """HTTP to one account of a test server; :meth:`raw` sends the path byte for byte."""

    def __init__(self, url: str, api_key: str) -> None:
        import requests

        self.url = url
        self.api_key = api_key
        self.session = requests.Session()
        self.session.auth = (api_key, "")

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """``requests`` semantics; ``path`` starts with ``/``."""
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with ``path`` sent byte for byte (no client normalisation)."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.netloc, timeout=10)
        key = self.api_key if api_key is None else api_key
        sent = {"Authorization": "Basic " + b64encode(f"{key}:".encode()).decode()}
        sent.update(headers or {})
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in sent.items():
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            answer = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()


@contextmanager
def run_server(**options: Any) -> Iterator[RunningServer]:
    """:func:`start_server` as a context manager that stops the server on exit and
    removes its temporary files (pass ``db=`` to keep the database)."""
    server = start_server(**options)
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


def new_account(server: RunningServer, email: str = "test@example.invalid") -> TestAccount:
    """Create a fresh account directly in the server's database."""
    from .server.storage import open_storage

    storage = open_storage(server.db)
    try:
        id = uuid.uuid4().hex
        key = storage.create_account(id, email)
    finally:
        storage.close()
    return TestAccount(server.url, key, id)


@pytest.fixture(scope="session")
def kvpio_server() -> Iterator[RunningServer]:
    """One ``kvpio serve`` process for the test session (temporary database)."""
    with run_server() as server:
        yield server


@pytest.fixture
def kvpio_account(kvpio_server: RunningServer) -> TestAccount:
    """A fresh, empty account on the session's server."""
    return new_account(kvpio_server)
