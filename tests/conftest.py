"""Shared fixtures: ``api`` (raw HTTP on a fresh account), ``count_requests``,
``clock``, ``closed_url`` and ``server2`` (a server with two workers)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvpio_mapping.testing import Api, RunningServer, TestAccount, run_server


@pytest.fixture
def api(kvpio_account: TestAccount) -> Api:
    """An authenticated session on a fresh, empty account."""
    return Api(kvpio_account.url, kvpio_account.api_key)


class Requests:
    """Counts the requests a transport sends (a bucket's views and a connection share one)."""

    def __init__(self, transport: Any) -> None:
        self.sent: list[tuple[str, str]] = []
        original = transport.request

        def request(method: str, target: str, **kwargs: Any) -> Any:
            self.sent.append((method, target))
            return original(method, target, **kwargs)

        transport.request = request

    @property
    def count(self) -> int:
        return len(self.sent)

    def templates(self) -> list[tuple[str, str]]:
        return [sent for sent in self.sent if sent[1].startswith("templates/")]

    def reset(self) -> None:
        self.sent.clear()


@pytest.fixture
def count_requests() -> Callable[[Any], Requests]:
    """Start counting the requests of a bucket, a template store or a transport."""
    return lambda target: Requests(getattr(target, "_transport", target))


class Clock:
    """A fake monotonic clock that moves only when told, for TTL tests that never sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    """A fresh :class:`Clock`."""
    return Clock()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def server2() -> Iterator[RunningServer]:
    """A server with two workers."""
    with run_server(workers=2) as server:
        yield server
