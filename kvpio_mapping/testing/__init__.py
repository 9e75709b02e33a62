"""A pytest plugin that runs a real ``kvpio serve`` for tests, yours included.

Installed with the package (entry point ``pytest11``), it provides:

- ``kvpio_server`` (session scope): one server process on a free port with a
  temporary SQLite database; ``.url``, ``.api_key`` and ``.db``.
- ``kvpio_account`` (function scope): a fresh, empty account on that server;
  ``.url`` and ``.api_key``. Each test gets its own isolated bucket.
- ``kvpio_postgres`` (session scope): a PostgreSQL server of its own, or the
  one named by ``$KVPIO_TEST_POSTGRES``; see :func:`start_postgres`.
- ``kvpio_postgres_db`` (function scope): the URL of a fresh, empty database
  on that server, dropped after the test.

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
import glob
import http.client
import os
import pwd
import secrets
import shutil
import signal
import socket
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
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    import requests

START_TIMEOUT = 30.0
POSTGRES_TIMEOUT = 60
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
    from ..server.storage import open_storage

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


POSTGRES_ENV: Final = "KVPIO_TEST_POSTGRES"
"""Names an external PostgreSQL server for the tests: the ``postgresql://`` URL
of a role that may create databases. Unset, the tests start a server of their own."""

_POSTGRES_USER: Final = "postgres"
_POSTGRES_TOOLS: Final = ("initdb", "pg_ctl", "psql")
POSTGRES_BINDIRS = "/usr/lib/postgresql/*/bin"
"""Where Debian installs each PostgreSQL version's binaries (a glob pattern)."""


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server can be started or reached for the tests; the message says why."""


def postgres_bindir() -> str | None:
    """The directory holding PostgreSQL's ``initdb``, ``pg_ctl`` and ``psql``, or None.

    Looks where Debian puts them: ``pg_config --bindir`` (which names a
    directory without a server when only the client library is installed),
    then the newest ``/usr/lib/postgresql/VERSION/bin``, then ``PATH``.
    """
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        answer = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if answer.returncode == 0:
            candidates.append(answer.stdout.strip())
    versions = glob.glob(POSTGRES_BINDIRS)
    candidates += sorted(versions, key=_major_version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in _POSTGRES_TOOLS):
            return directory
    return None


def _major_version(bindir: str) -> int:
    """The version in ``/usr/lib/postgresql/VERSION/bin`` (0 if it is not a number)."""
    version = os.path.basename(os.path.dirname(bindir))
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningPostgres:
    """A PostgreSQL server for tests: a superuser URL, and what is needed to stop it.

    ``data_dir`` is None for an external server (``$KVPIO_TEST_POSTGRES``),
    which is never stopped or restarted here.
    """

    url: str
    psql_path: str
    data_dir: str | None = None
    bindir: str = ""
    run_as: list[str] = field(default_factory=list, repr=False)
    options: str = field(default="", repr=False)

    @property
    def log_path(self) -> str:
        """The server's log file (empty for an external server)."""
        return os.path.join(os.path.dirname(self.data_dir), "server.log") if self.data_dir else ""

    def log(self) -> str:
        """What the server logged so far."""
        path = self.log_path
        return Path(path).read_text(errors="replace") if path and os.path.exists(path) else ""

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server, as the same role."""
        parts = urlsplit(self.url)
        return parts._replace(path="/" + name).geturl()

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run ``sql`` with ``psql`` and return its unaligned output; fails loudly on an error."""
        url = self.url if database is None else self.database_url(database)
        command = [self.psql_path, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        answer = subprocess.run(
            [*command, "-d", url, "-c", sql],
            capture_output=True,
            text=True,
            timeout=POSTGRES_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if answer.returncode != 0:
            raise RuntimeError(f"psql failed on {sql!r}: {answer.stderr.strip()}")
        return answer.stdout

    def create_database(self) -> str:
        """Create a fresh, empty database and return its URL."""
        name = "kvpio_test_" + uuid.uuid4().hex[:16]
        self.psql(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database at ``url`` (made by :meth:`create_database`), ending its sessions."""
        name = urlsplit(url).path.lstrip("/")
        if not name.startswith("kvpio_test_") or not name.isidentifier():
            raise ValueError(f"not a test database: {url!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _pg_ctl(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        if self.data_dir is None:
            raise RuntimeError("an external PostgreSQL server is not started or stopped here")
        command = [*self.run_as, os.path.join(self.bindir, "pg_ctl"), "-D", self.data_dir]
        return subprocess.run(
            [*command, *arguments],
            capture_output=True,
            text=True,
            timeout=POSTGRES_TIMEOUT + 10,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the server (again) on its port and wait until it accepts connections."""
        answer = self._pg_ctl(
            "start", "-w", "-t", str(POSTGRES_TIMEOUT), "-l", self.log_path, "-o", self.options
        )
        if answer.returncode != 0:
            raise PostgresUnavailableError(
                f"pg_ctl start failed: {answer.stdout}{answer.stderr}\n{self.log()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (roll back sessions) or ``immediate`` (like a crash)."""
        answer = self._pg_ctl("stop", "-w", "-m", mode, "-t", str(POSTGRES_TIMEOUT))
        if answer.returncode != 0 and "PID file" not in answer.stderr:
            raise RuntimeError(f"pg_ctl stop failed: {answer.stdout}{answer.stderr}")

    def restart(self, mode: str = "fast") -> None:
        """Stop the server and start it again on the same port and data."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        if self.data_dir is not None:
            self.stop("immediate")
            shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)


def start_postgres(*, attempts: int = 3) -> RunningPostgres:
    """``initdb`` a temporary PostgreSQL cluster and start it on a free loopback port.

    The cluster trusts loopback connections and listens on no Unix socket.
    It runs without fsync (the tests need no safety from a crash of the
    machine) but with synchronous commits, so a committed transaction
    survives the server being killed: :meth:`RunningPostgres.stop` with
    ``immediate``. As root,
    it runs as the ``postgres`` user (``initdb`` refuses root). Raises
    :class:`PostgresUnavailableError`, saying why, when that cannot be done.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise PostgresUnavailableError(
            "PostgreSQL server binaries (initdb, pg_ctl, psql) not found in"
            " `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH: install them"
            " (Debian: apt-get install postgresql; `make test` does so as root) or set"
            f" ${POSTGRES_ENV} to the URL of a server the tests may create databases on"
        )
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(_POSTGRES_USER)
        except KeyError:
            raise PostgresUnavailableError(
                f"running as root, the test PostgreSQL server needs the {_POSTGRES_USER!r}"
                " user (initdb refuses root); Debian's postgresql package creates it"
            ) from None
        run_as = ["runuser", "-u", _POSTGRES_USER, "--"]
    directory = tempfile.mkdtemp(prefix="kvpio-postgres-")
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    data_dir = os.path.join(directory, "data")
    initdb = [*run_as, os.path.join(bindir, "initdb"), "-D", data_dir, "-U", _POSTGRES_USER]
    initdb += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
    answer = subprocess.run(
        initdb, capture_output=True, text=True, timeout=POSTGRES_TIMEOUT, stdin=subprocess.DEVNULL
    )
    if answer.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise PostgresUnavailableError(f"initdb failed: {answer.stdout}{answer.stderr}")
    psql = os.path.join(bindir, "psql")
    for attempt in range(attempts):
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
            " -c fsync=off -c full_page_writes=off"
            " -c max_connections=300"
        )
        url = f"postgresql://{_POSTGRES_USER}@127.0.0.1:{port}/postgres"
        server = RunningPostgres(url, psql, data_dir, bindir, run_as, options)
        try:
            server.start()
        except PostgresUnavailableError:
            # Another process may have taken the port between our probe and the start.
            if attempt + 1 == attempts or "already in use" not in server.log():
                shutil.rmtree(directory, ignore_errors=True)
                raise
            continue
        return server
    raise AssertionError("unreachable")


def external_postgres(url: str) -> RunningPostgres:
    """The external server at ``url`` (as ``$KVPIO_TEST_POSTGRES`` names it), reached with psql."""
    bindir = postgres_bindir()
    psql = os.path.join(bindir, "psql") if bindir is not None else shutil.which("psql")
    if psql is None:
        raise PostgresUnavailableError(
            f"${POSTGRES_ENV} is set, but psql, which the tests use to create databases,"
            " is not installed (Debian: apt-get install postgresql-client)"
        )
    server = RunningPostgres(url, psql)
    try:
        server.psql("SELECT 1")
    except RuntimeError as exc:
        raise PostgresUnavailableError(f"${POSTGRES_ENV}={url!r} cannot be used: {exc}") from None
    return server


@contextmanager
def run_postgres() -> Iterator[RunningPostgres]:
    """The server ``$KVPIO_TEST_POSTGRES`` names, else one started here and stopped on exit."""
    external = os.environ.get(POSTGRES_ENV)
    if external:
        yield external_postgres(external)
        return
    server = start_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def kvpio_postgres() -> Iterator[RunningPostgres]:
    """One PostgreSQL server for the test session; the test fails (never skips) without one."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def kvpio_postgres_db(kvpio_postgres: RunningPostgres) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    url = kvpio_postgres.create_database()
    try:
        yield url
    finally:
        kvpio_postgres.drop_database(url)
