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
import multiprocessing
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    import uvicorn

    from .app import App

DB_ENV: Final = "KVPIO_SERVE_DB"
API_KEY_ENV: Final = "KVPIO_SERVE_API_KEY"
MAX_BODY_ENV: Final = "KVPIO_SERVE_MAX_BODY"
RENDER_TIMEOUT_ENV: Final = "KVPIO_SERVE_RENDER_TIMEOUT"
DEFAULT_WORKERS: Final = 2
"""Measured on 2 cores: 1.8x the requests/s of one worker, the same latency."""


def default_db() -> str:
    """``$KVPIO_DB``, else ``${XDG_DATA_HOME:-~/.local/share}/kvpio/kvpio.sqlite3``."""
    if os.environ.get("KVPIO_DB"):
        return os.environ["KVPIO_DB"]
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "kvpio", "kvpio.sqlite3")


def prepare_db(location: str) -> None:
    """Create the directory of a database file if it is missing."""
    if location != "memory:":
        Path(location.removeprefix("sqlite://")).expanduser().parent.mkdir(
            parents=True, exist_ok=True
        )


def app_from_env() -> App:
    """The app of one worker, configured by the variables :func:`serve` sets."""
    from .app import DEFAULT_MAX_BODY, create_app
    from .render import RenderLimits
    from .storage import open_storage

    location = os.environ.get(DB_ENV) or default_db()
    storage = open_storage(location)
    api_key = os.environ.get(API_KEY_ENV)
    if api_key and location == "memory:":
        storage.ensure_account(api_key)
    limits = RenderLimits()
    if os.environ.get(RENDER_TIMEOUT_ENV):
        limits = dataclasses.replace(limits, timeout=float(os.environ[RENDER_TIMEOUT_ENV]))
    max_body = int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY)
    return create_app(storage, max_body=max_body, limits=limits)


def _bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(host: str, port: int) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        "kvpio_mapping.server.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


def _worker(host: str, port: int) -> None:
    """One worker process: its own listening socket on the shared port, one uvicorn server."""
    import uvicorn

    sock = _bind(host, port, reuse_port=True)
    threading.Thread(target=_stop_with_parent, args=(os.getppid(),), daemon=True).start()
    uvicorn.Server(_uvicorn_config(host, port)).run(sockets=[sock])


def _stop_with_parent(parent: int) -> None:
    """Shut this worker down gracefully once its parent is gone (say, killed with SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _supervise(host: str, port: int, workers: int) -> int:
    """Run ``workers`` worker processes until SIGTERM or SIGINT, replacing any that die.

    On a signal each worker gets SIGTERM, finishes its requests in flight and
    exits. A worker that dies within a second of starting stops the server.
    """
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def start() -> tuple[BaseProcess, float]:
        process = context.Process(target=_worker, args=(host, port), daemon=False)
        process.start()
        return process, time.monotonic()

    running = [start() for _ in range(workers)]
    code = 0
    while not stop.wait(0.2):
        for index, (process, started) in enumerate(running):
            if process.is_alive():
                continue
            if time.monotonic() - started < 1.0:
                exit_code = process.exitcode
                sys.stderr.write(f"kvpio serve: a worker failed to start (exit {exit_code})\n")
                stop.set()
                code = 1
                break
            running[index] = start()
    for process, _ in running:
        if process.is_alive():
            process.terminate()
    for process, _ in running:
        process.join(35)
        if process.is_alive():
            process.kill()
            process.join()
    return code


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce(host: str, port: int, url: str) -> None:
    """Print the URL line once the server answers a request."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    while True:
        connection = http.client.HTTPConnection(probe, port, timeout=2)
        try:
            connection.request("GET", "/openapi.json")
            if connection.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.05)
        finally:
            connection.close()
    sys.stdout.write(f"kvpio serving on {url}\n")
    sys.stdout.flush()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    db: str | None = None,
    api_key: str | None = None,
    workers: int | None = None,
    max_body: int | None = None,
    render_timeout: float | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (requests in flight finish); the exit code."""
    import uvicorn

    from .storage import open_storage

    location = db or default_db()
    if workers is None:
        workers = 1 if location == "memory:" else DEFAULT_WORKERS
    if location == "memory:" and workers > 1:
        sys.stderr.write("kvpio serve: a memory: database cannot be shared by workers\n")
        return 2
    try:
        prepare_db(location)
        if api_key and location != "memory:":
            storage = open_storage(location)
            try:
                storage.ensure_account(api_key)
            finally:
                storage.close()
    except (OSError, sqlite3.Error) as exc:
        sys.stderr.write(f"kvpio serve: cannot open the database {location!r}: {exc}\n")
        return 1
    os.environ[DB_ENV] = location
    for name, setting in (
        (API_KEY_ENV, api_key),
        (MAX_BODY_ENV, max_body),
        (RENDER_TIMEOUT_ENV, render_timeout),
    ):
        if setting is None or setting == "":
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(setting)

    try:
        # With several workers this socket only holds the port: each worker listens on its own.
        sock = _bind(host, port, listen=workers == 1, reuse_port=workers > 1)
    except OSError as exc:
        sys.stderr.write(f"kvpio serve: cannot listen on {host}:{port}: {exc.strerror}\n")
        return 1
    port = sock.getsockname()[1]
    threading.Thread(target=_announce, args=(host, port, _url(host, port)), daemon=True).start()
    if workers > 1:
        return _supervise(host, port, workers)
    server = uvicorn.Server(_uvicorn_config(host, port))
    # uvicorn re-raises the signal it shut down on once it is done; exit 0 instead.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    server.run(sockets=[sock])
    return 0 if server.started else 3


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
