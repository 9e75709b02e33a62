"""Run the server: bind the socket, start uvicorn workers, announce the URL.

Workers are separate (spawned) processes; each builds its app with
:func:`app_from_env` from environment variables the parent sets, so the
configuration needs no pickling and every worker opens its own storage.
With several workers each listens on a socket of its own on the same port
(``SO_REUSEPORT``), so the kernel spreads connections evenly; one shared
socket let a burst of connections all land on whichever worker woke first.
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Final

from .database import (
    DatabaseProblem,
    damage_report,
    default_db,
    open_db,
    resolve_db,
    shown,
    storage_errors,
)

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Event
    from types import FrameType

    import uvicorn

    from .app import App

DB_ENV: Final = "KVPIO_SERVE_DB"
API_KEY_ENV: Final = "KVPIO_SERVE_API_KEY"
MAX_BODY_ENV: Final = "KVPIO_SERVE_MAX_BODY"
RENDER_TIMEOUT_ENV: Final = "KVPIO_SERVE_RENDER_TIMEOUT"
HEADER_TIMEOUT_ENV: Final = "KVPIO_SERVE_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV: Final = "KVPIO_SERVE_BODY_TIMEOUT"
MAX_CONNECTIONS_ENV: Final = "KVPIO_SERVE_MAX_CONNECTIONS"
SYNC_ENV: Final = "KVPIO_SERVE_SYNC"
LOG_LEVEL_ENV: Final = "KVPIO_SERVE_LOG_LEVEL"
LOG_FORMAT_ENV: Final = "KVPIO_SERVE_LOG_FORMAT"
ACCESS_LOG_ENV: Final = "KVPIO_SERVE_ACCESS_LOG"
TLS_CERT_ENV: Final = "KVPIO_SERVE_TLS_CERT"
TLS_KEY_ENV: Final = "KVPIO_SERVE_TLS_KEY"
STREAMS_ENV: Final = "KVPIO_SERVE_MAX_STREAMS"
ACCOUNT_STREAMS_ENV: Final = "KVPIO_SERVE_MAX_ACCOUNT_STREAMS"
DEFAULT_WORKERS: Final = 2
"""Measured on 2 cores: 1.8x the requests/s of one worker, the same latency."""


def app_from_env() -> App:
    """The app of one worker, configured by the variables :func:`serve` sets."""
    from .allocator import map_large_blocks
    from .app import DEFAULT_MAX_BODY, create_app
    from .bodies import BodyLimits
    from .feed import StreamLimits
    from .render import RenderLimits
    from .storage import open_storage

    map_large_blocks()
    location = os.environ.get(DB_ENV) or default_db()
    storage = open_storage(location, sync=os.environ.get(SYNC_ENV) or "normal")
    api_key = os.environ.get(API_KEY_ENV)
    if api_key and location == "memory:":
        storage.ensure_account(api_key)
    limits = RenderLimits()
    if os.environ.get(RENDER_TIMEOUT_ENV):
        limits = dataclasses.replace(limits, timeout=float(os.environ[RENDER_TIMEOUT_ENV]))
    max_body = int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY)
    streams = StreamLimits()
    if os.environ.get(STREAMS_ENV):
        streams = dataclasses.replace(streams, per_worker=int(os.environ[STREAMS_ENV]))
    if os.environ.get(ACCOUNT_STREAMS_ENV):
        streams = dataclasses.replace(streams, per_account=int(os.environ[ACCOUNT_STREAMS_ENV]))
    bodies = BodyLimits()
    if os.environ.get(BODY_TIMEOUT_ENV):
        bodies = dataclasses.replace(bodies, timeout=float(os.environ[BODY_TIMEOUT_ENV]))
    return create_app(
        storage,
        max_body=max_body,
        limits=limits,
        streams=streams,
        bodies=bodies,
        access_log=bool(os.environ.get(ACCESS_LOG_ENV)),
    )


def _bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _hold_port(host: str, port: int, workers: int) -> tuple[socket.socket, socket.socket | None]:
    """The sockets that hold the port for the server's lifetime; ``OSError`` if it is taken.

    With one worker it is the listening socket itself. With several, each
    worker listens on a ``SO_REUSEPORT`` socket of its own, and any process
    of the same user could join them the same way: so the port is first
    bound without ``SO_REUSEPORT``, which fails while anything listens on
    it; and, on Linux, the server holds an abstract Unix socket named after
    the port, which fails for a second server even while the first one's
    workers are still starting.
    """
    if workers == 1:
        return _bind(host, port), None
    probe = _bind(host, port, listen=False)
    port = probe.getsockname()[1]
    probe.close()
    lock = None
    if sys.platform.startswith("linux"):
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0kvpio serve {host} {port}")
        except OSError:
            lock.close()
            raise
    return _bind(host, port, listen=False, reuse_port=True), lock


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


def connection_cap(open_files: int) -> int:
    """Connections a worker keeps at most: its open-file limit less room for other files."""
    return max(open_files - max(64, open_files // 10), 1)


def _uvicorn_config(host: str, port: int) -> uvicorn.Config:
    import uvicorn

    from . import logs
    from .heads import HeadLimits, protocol_class

    defaults = HeadLimits()
    limits = HeadLimits(
        header_timeout=float(os.environ.get(HEADER_TIMEOUT_ENV) or defaults.header_timeout),
        max_connections=int(os.environ.get(MAX_CONNECTIONS_ENV) or defaults.max_connections),
    )
    config = uvicorn.Config(
        "kvpio_mapping.server.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_class(limits),
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        ssl_certfile=os.environ.get(TLS_CERT_ENV) or None,
        ssl_keyfile=os.environ.get(TLS_KEY_ENV) or None,
    )
    logs.configure(
        os.environ.get(LOG_LEVEL_ENV) or "warning",
        os.environ.get(LOG_FORMAT_ENV) or "plain",
        access_log=bool(os.environ.get(ACCESS_LOG_ENV)),
    )
    return config


def _uvicorn_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server whose shutdown signal also ends the open change feeds at once.

    Without it a graceful shutdown would wait for streams that never finish.
    """
    import uvicorn

    from .feed import closing

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            closing.set()
            super().handle_exit(sig, frame)

    return Server(config)


def _worker(host: str, port: int, serving: Event) -> None:
    """One worker process: its own socket on the shared port, one uvicorn server.

    The socket is bound but not listening: uvicorn listens once the app is
    loaded, so no connection waits on a worker that dies while starting.
    ``serving`` is set once it listens. A database it cannot open is one
    line on stderr, not a traceback.
    """
    sock = _bind(host, port, listen=False, reuse_port=True)
    server = _uvicorn_server(_uvicorn_config(host, port))
    watch = threading.Thread(target=_watch, args=(server, serving, os.getppid()), daemon=True)
    watch.start()
    try:
        server.run(sockets=[sock])
    except storage_errors() as exc:
        location = shown(os.environ.get(DB_ENV) or "")
        sys.stderr.write(f"kvpio serve: worker {os.getpid()} cannot use {location}: {exc}\n")
        raise SystemExit(1) from None
    except OSError as exc:
        sys.stderr.write(f"kvpio serve: worker {os.getpid()} cannot start: {exc}\n")
        raise SystemExit(1) from None


def _watch(server: uvicorn.Server, serving: Event, parent: int) -> None:
    """Tell the parent once ``server`` listens; shut down gracefully once the parent is gone."""
    while os.getppid() == parent:
        if server.started and not serving.is_set():
            serving.set()
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


HEALTHY_AFTER: Final = 1.0
"""Seconds a worker must have served to count as started; one dying sooner failed to start."""
FIRST_RESTART_DELAY: Final = 0.1
MAX_RESTART_DELAY: Final = 5.0
GIVE_UP_AFTER: Final = 10.0
"""Seconds with no worker serving before the server stops: it cannot run here."""
STOP_GRACE: Final = 35.0
"""Seconds a worker has, after SIGTERM, to finish its requests before it is killed."""


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a worker whose last ``failures`` starts failed in a row.

    A worker that ran and then died is replaced at once; repeated failed
    starts back off exponentially, so a crash loop does not eat the machine.
    """
    if failures == 0:
        return 0.0
    return min(FIRST_RESTART_DELAY * 2.0 ** (failures - 1), MAX_RESTART_DELAY)


@dataclasses.dataclass
class _Slot:
    """One worker place: its process (``None`` while waiting to restart) and its history."""

    process: BaseProcess | None = None
    serving: Event | None = None
    started: float = 0.0
    serving_since: float | None = None
    failures: int = 0
    restart_at: float = 0.0


def _forget_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges; its counters stay in the sums.

    Only ``prometheus_client.multiprocess`` is imported here: importing the
    server's metrics would give this process samples of its own.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _supervise(host: str, port: int, workers: int) -> int:
    """Run ``workers`` worker processes until SIGTERM or SIGINT, replacing any that die.

    A dead worker is replaced after :func:`restart_delay` while the others
    keep serving; each death is one line on stderr. The server gives up
    (exit 1) only once no worker has been serving for :data:`GIVE_UP_AFTER`
    seconds. On a signal each worker gets SIGTERM, finishes its requests in
    flight and exits.
    """
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def start(slot: _Slot, now: float) -> None:
        slot.serving = context.Event()
        slot.process = context.Process(target=_worker, args=(host, port, slot.serving))
        slot.process.start()
        slot.started, slot.serving_since = now, None

    slots = [_Slot() for _ in range(workers)]
    last_serving = time.monotonic()
    for slot in slots:
        start(slot, last_serving)
    last_end = ""
    code = 0
    while not stop.wait(0.1):
        now = time.monotonic()
        for slot in slots:
            process = slot.process
            if process is None:
                if now >= slot.restart_at:
                    start(slot, now)
            elif process.is_alive():
                if slot.serving is not None and slot.serving.is_set():
                    if slot.serving_since is None:
                        slot.serving_since = now
                    last_serving = now
            else:
                lived = now - slot.started
                served = 0.0 if slot.serving_since is None else now - slot.serving_since
                slot.failures = 0 if served >= HEALTHY_AFTER else slot.failures + 1
                delay = restart_delay(slot.failures)
                slot.process, slot.restart_at = None, now + delay
                last_end = _how_it_ended(process.exitcode)
                if process.pid is not None:
                    _forget_metrics(process.pid)
                sys.stderr.write(
                    f"kvpio serve: worker {process.pid} {last_end} after {lived:.1f} s;"
                    f" starting another in {delay:.1f} s\n"
                )
        if now - last_serving > GIVE_UP_AFTER:
            code = 1
            break
    for slot in slots:
        if slot.process is not None and slot.process.is_alive():
            slot.process.terminate()
    for slot in slots:
        if slot.process is not None:
            slot.process.join(STOP_GRACE)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
    if code:
        sys.stderr.write(
            f"kvpio serve: no worker could run for {GIVE_UP_AFTER:g} s (the last one"
            f" {last_end}; the lines above say why); stopped\n"
        )
    return code


def _url(host: str, port: int, tls: bool) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_problem(cert: str | None, key: str | None) -> str | None:
    """Why ``cert`` and ``key`` cannot serve TLS, in one line; ``None`` if they can."""
    if bool(cert) != bool(key):
        return "--tls-cert and --tls-key go together"
    if cert and key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use the TLS certificate {cert} with the key {key}: {exc}"
    return None


def _announce(host: str, port: int, url: str, location: str, tls: bool) -> None:
    """Print the URL and database line once the server answers a request."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # it asks itself whether it answers
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    while True:
        connection = (
            http.client.HTTPSConnection(probe, port, timeout=2, context=unverified)
            if tls
            else http.client.HTTPConnection(probe, port, timeout=2)
        )
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.05)
        finally:
            connection.close()
    sys.stdout.write(f"kvpio serving on {url} (database {shown(location)})\n")
    sys.stdout.flush()


START_CHECK_SECONDS: Final = 3.0
"""Time the start-up check of the database may take; ``kvpio db check`` checks it all."""


def _prepare_db(location: str, api_key: str | None) -> None:
    """Create or open the database, check it briefly, make sure the API key's account exists."""
    from .storage import AccountExistsError
    from .storage.tree import TreeStorage

    storage = open_db(location, create=True)
    location = shown(location)
    try:
        if isinstance(storage, TreeStorage):
            try:
                problems = storage.check(full=False, seconds=START_CHECK_SECONDS)
            except TimeoutError:
                sys.stderr.write(
                    f"kvpio serve: the database is large: the start-up check stopped after"
                    f" {START_CHECK_SECONDS:g} s; `kvpio db check --db {location}` checks it all\n"
                )
                problems = []
            if problems:
                raise DatabaseProblem(damage_report(location, problems))
        if api_key and location != "memory:":
            try:
                storage.ensure_account(api_key)
            except AccountExistsError:
                raise DatabaseProblem(
                    f"the account 'default' of {location} has another API key: start with that"
                    f" key, or without --api-key and add one with"
                    f" `kvpio accounts create --db {location}`"
                ) from None
    except storage_errors() as exc:
        raise DatabaseProblem(f"cannot use the database {location}: {exc}") from None
    finally:
        storage.close()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    db: str | None = None,
    api_key: str | None = None,
    workers: int | None = None,
    max_body: int | None = None,
    render_timeout: float | None = None,
    header_timeout: float | None = None,
    body_timeout: float | None = None,
    max_connections: int | None = None,
    sync: str = "normal",
    log_level: str = "warning",
    log_format: str = "plain",
    access_log: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_streams: int | None = None,
    max_account_streams: int | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (requests in flight finish); the exit code.

    The soft limit of open files is raised to the hard one, and each worker
    keeps its connections under :func:`connection_cap` of it (or
    ``max_connections``, if lower). Metrics are kept in a fresh directory
    for this run, removed at exit.
    """

    location = resolve_db(db)
    problem = _tls_problem(tls_cert, tls_key)
    if problem:
        sys.stderr.write(f"kvpio serve: {problem}\n")
        return 2
    tls = bool(tls_cert)
    if not tls and not is_loopback(host):
        sys.stderr.write(
            f"kvpio serve: warning: listening on {host} without TLS: API keys cross the"
            " network in clear (Basic auth); use --tls-cert and --tls-key, or a reverse"
            " proxy that terminates TLS\n"
        )
    if workers is None:
        workers = 1 if location == "memory:" else DEFAULT_WORKERS
    if location == "memory:" and workers > 1:
        sys.stderr.write("kvpio serve: a memory: database cannot be shared by workers\n")
        return 2
    try:
        _prepare_db(location, api_key)
    except DatabaseProblem as exc:
        sys.stderr.write(f"kvpio serve: {exc}\n")
        return 1
    os.environ[DB_ENV] = location
    cap = connection_cap(raise_open_files_limit())
    for name, setting in (
        (API_KEY_ENV, api_key),
        (MAX_BODY_ENV, max_body),
        (RENDER_TIMEOUT_ENV, render_timeout),
        (HEADER_TIMEOUT_ENV, header_timeout),
        (BODY_TIMEOUT_ENV, body_timeout),
        (MAX_CONNECTIONS_ENV, cap if max_connections is None else min(max_connections, cap)),
        (SYNC_ENV, sync),
        (LOG_LEVEL_ENV, log_level),
        (LOG_FORMAT_ENV, log_format),
        (ACCESS_LOG_ENV, "1" if access_log else None),
        (TLS_CERT_ENV, os.path.abspath(tls_cert) if tls_cert else None),
        (TLS_KEY_ENV, os.path.abspath(tls_key) if tls_key else None),
        (STREAMS_ENV, max_streams),
        (ACCOUNT_STREAMS_ENV, max_account_streams),
    ):
        if setting is None or setting == "":
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(setting)

    try:
        sock, _lock = _hold_port(host, port, workers)
    except OSError as exc:
        sys.stderr.write(f"kvpio serve: cannot listen on {host}:{port}: {exc.strerror}\n")
        return 1
    port = sock.getsockname()[1]
    url = _url(host, port, tls)
    metrics_dir = tempfile.mkdtemp(prefix="kvpio-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        announce = threading.Thread(
            target=_announce, args=(host, port, url, location, tls), daemon=True
        )
        announce.start()
        if workers > 1:
            return _supervise(host, port, workers)
        return _serve_here(host, port, sock)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_here(host: str, port: int, sock: socket.socket) -> int:
    """Serve in this process (one worker); the exit code."""
    server = _uvicorn_server(_uvicorn_config(host, port))
    # uvicorn re-raises the signal it shut down on once it is done; exit 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    server.run(sockets=[sock])
    return 0 if server.started else 3


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
