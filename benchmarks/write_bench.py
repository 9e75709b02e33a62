"""Server writes: small POSTs against the stack's body-reading ceiling, 16 writers
against one, one worker against two, and a batch of 1.5 M small keys.

Starts ``kvpio serve`` (temporary database) and drives small writes to
1,000 top-level keys, ``POST /v1/bucket/w{n}``, with ``wrk`` (16 connections,
or 1 for the single writer), in alternating rounds with their baselines:

- the ceiling: the same Falcon/uvicorn stack (uvloop, the server's HTTP
  protocol) reading the body and answering an empty 204, no storage;
- 16 concurrent writers against one writer alone, on the same server;
- 2 workers against 1 worker under 16 writers (throughput and p99).

Then ``POST /v1/bucket/`` of 1.5 M small keys (about 16 MB), the median of
``ROUNDS`` with the bucket emptied between them, in keys/s beside the median
``json.loads`` of the same body in this process (one over ``BATCH_TIMEOUT``
seconds is reported as such).

With ``--postgres``, the same rows on a PostgreSQL database
(``$KVPIO_TEST_POSTGRES``, else a temporary server as the tests start it).

Run: ``.venv/bin/python benchmarks/write_bench.py [--postgres]`` (about 2 minutes;
needs ``wrk``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from kvpio_mapping.testing import run_postgres, run_server

ROUNDS = 3
SECONDS = 4
WRITERS = 16
BATCH_KEYS = 1_500_000
CEILING_TARGET = 0.5
WRITERS_TARGET = 3.0
BATCH_TARGET = 500_000
BATCH_TIMEOUT = 150

_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/bucket/w" .. (counter % 1000), nil, "1")
end
"""


def _auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _wrk(url: str, headers: dict[str, str], connections: int) -> tuple[float, float]:
    """Requests/s and the p99 latency in ms of small POSTs over ``connections``."""
    options = [f"-H{name}: {value}" for name, value in headers.items()]
    with tempfile.TemporaryDirectory() as directory:
        script = os.path.join(directory, "post.lua")
        with open(script, "w") as file:
            file.write(_SCRIPT)
        output = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{SECONDS}s",
                "--latency",
                "-s",
                script,
                *options,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"writes failed:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    assert rate is not None and p99 is not None, output
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rate.group(1)), float(p99.group(1)) * scale


def _ceiling_app() -> Any:
    """A Falcon ASGI app that reads the body of a POST and answers 204."""
    import falcon.asgi

    class Sink:
        async def on_post(self, req: Any, resp: Any, rest: str) -> None:
            await req.stream.read()
            resp.status = 204

    app = falcon.asgi.App()
    app.add_route("/v1/bucket/{rest:path}", Sink())
    return app


def _serve_ceiling(port: int) -> None:
    """Serve :func:`_ceiling_app` as ``kvpio serve`` serves its app (uvloop, its protocol)."""
    import uvicorn

    from kvpio_mapping.server.heads import HeadLimits, protocol_class

    uvicorn.run(
        _ceiling_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=protocol_class(HeadLimits()),
        access_log=False,
        log_config=None,
    )


@contextlib.contextmanager
def _ceiling() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--ceiling", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/bucket/w"
    finally:
        process.terminate()
        process.wait(30)


def _batch_body() -> bytes:
    return ("{" + ",".join(f'"{n:x}":1' for n in range(BATCH_KEYS)) + "}").encode()


def _batch(url: str, key: str, method: str, target: str, body: bytes | None = None) -> float:
    """Seconds one batch request takes (storing :data:`BATCH_KEYS` keys, or emptying the
    bucket), answered 200."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=BATCH_TIMEOUT)
    headers = {"Authorization": _auth(key), "Content-Type": "application/json"}
    started = time.perf_counter()
    connection.request(method, target, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {target} answered {response.status}")
    return elapsed


def _row(label: str, operation: str, ours: float, base: float, unit: str, target: str) -> None:
    ratio = ours / base if base else float("nan")
    figures = f"{ours:>10.0f} {base:>10.0f} {unit:<7} {ratio:>6.2f} {target:>7}"
    print(f"{label:<12} {operation:<44} {figures}")


def measure(label: str, db: str | None) -> None:
    """Every row for one database (``None``: a temporary SQLite file)."""
    # Servers sharing a PostgreSQL database share its default account's key.
    base: dict[str, Any] = {} if db is None else {"db": db, "api_key": secrets.token_urlsafe(16)}
    rates: dict[str, list[float]] = {}
    p99s: dict[str, list[float]] = {}

    def drive(name: str, url: str, headers: dict[str, str], connections: int) -> None:
        rate, p99 = _wrk(url, headers, connections)
        rates.setdefault(name, []).append(rate)
        p99s.setdefault(name, []).append(p99)

    with contextlib.ExitStack() as stack:
        ceiling = stack.enter_context(_ceiling())
        one = stack.enter_context(run_server(workers=1, max_body=32 * 2**20, **base))
        two = stack.enter_context(run_server(workers=2, **base))
        for _ in range(ROUNDS):
            drive("ceiling", ceiling, {}, WRITERS)
            for name, server in (("1 worker", one), ("2 workers", two)):
                headers = {"Authorization": _auth(server.api_key)}
                drive(name, server.url + "/v1/bucket/w", headers, WRITERS)
                drive(name + " alone", server.url + "/v1/bucket/w", headers, 1)
        _print_writes(label, rates, p99s)
        body = _batch_body()
        operation = f"batch of {BATCH_KEYS:,} keys vs json.loads"
        decodes, stores = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            json.loads(body)
            decodes.append(time.perf_counter() - started)
            try:
                stores.append(_batch(one.url, one.api_key, "POST", "/v1/bucket/", body))
            except TimeoutError:
                print(f"{label:<12} {operation:<44} took over {BATCH_TIMEOUT} s")
                return
            _batch(one.url, one.api_key, "DELETE", "/v1/bucket/?all=true")
    stored, decode = statistics.median(stores), statistics.median(decodes)
    _row(
        label, operation, BATCH_KEYS / stored, BATCH_KEYS / decode, "keys/s", f">= {BATCH_TARGET:,}"
    )


def _print_writes(label: str, rates: dict[str, list[float]], p99s: dict[str, list[float]]) -> None:
    rate = {name: statistics.median(values) for name, values in rates.items()}
    p99 = {name: statistics.median(values) for name, values in p99s.items()}
    ceiling_target = f">= {CEILING_TARGET}"
    writers_target = f">= {WRITERS_TARGET:g}"
    _row(
        label,
        "small POST, 1 worker vs body-reading ceiling",
        rate["1 worker"],
        rate["ceiling"],
        "req/s",
        ceiling_target,
    )
    for workers in ("1 worker", "2 workers"):
        _row(
            label,
            f"{WRITERS} writers vs 1 writer, {workers}",
            rate[workers],
            rate[workers + " alone"],
            "req/s",
            writers_target,
        )
    _row(
        label,
        f"{WRITERS} writers, 2 workers vs 1 worker",
        rate["2 workers"],
        rate["1 worker"],
        "req/s",
        ">= 1",
    )
    _row(
        label,
        f"{WRITERS} writers p99, 2 workers vs 1 worker",
        p99["2 workers"],
        p99["1 worker"],
        "ms",
        "<= 1",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", action="store_true", help="also write to PostgreSQL")
    parser.add_argument("--ceiling", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling is not None:
        _serve_ceiling(args.ceiling)
        return
    if shutil.which("wrk") is None:
        print("write_bench.py needs wrk (apt-get install wrk): skipped")
        return
    load = ", ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"kvpio serve writes, wrk -t1, medians of {ROUNDS} alternating rounds of {SECONDS} s;")
    print(f"load average {load} (read the ratios on a shared machine)")
    print(
        f"{'database':<12} {'operation':<44} {'ours':>10} {'baseline':>10} {'unit':<7} "
        f"{'ratio':>6} {'target':>7}"
    )
    measure("SQLite", None)
    if args.postgres:
        with run_postgres() as postgres:
            url = postgres.create_database()
            try:
                measure("PostgreSQL", url)
            finally:
                postgres.drop_database(url)


if __name__ == "__main__":
    main()
