"""Runaway templates against a real server: they end in 422 and bucket reads stay fast."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from kvpio_mapping.testing import RunningServer, TestAccount, new_account, run_server

TIMEOUT = 1.0
MARGIN = 1.5
LOOP_FOREVER = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    # One server worker process: every request shares the one event loop under test.
    with run_server(workers=1, render_timeout=TIMEOUT) as running:
        yield running


@pytest.fixture
def account(server: RunningServer) -> TestAccount:
    return new_account(server)


def session(account: TestAccount) -> requests.Session:
    http = requests.Session()
    http.auth = (account.api_key, "")
    return http


def test_runaway_renders_do_not_slow_bucket_reads(account: TestAccount) -> None:
    setup = session(account)
    assert setup.post(account.url + "/v1/bucket/foo", json={"bar": 1}).status_code == 200
    assert setup.post(account.url + "/v1/templates/spin", json=LOOP_FOREVER).status_code == 200
    # Warm up: the render workers start with the first render.
    assert setup.post(account.url + "/v1/templates/ok", json="{{ foo.bar }}").status_code == 200
    assert setup.get(account.url + "/v1/templates/ok").text == "1"

    renders: list[tuple[int, float, str]] = []
    reads: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def render() -> None:
        http = session(account)
        started = time.monotonic()
        response = http.get(account.url + "/v1/templates/spin", timeout=30)
        renders.append((response.status_code, time.monotonic() - started, response.text))

    def read() -> None:
        http = session(account)
        while not done.is_set():
            started = time.monotonic()
            response = http.get(account.url + "/v1/bucket/foo/bar", timeout=30)
            reads.append(time.monotonic() - started)
            if response.status_code != 200 or response.text != "1":
                failures.append(f"{response.status_code} {response.text!r}")
            time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    started = time.monotonic()
    threads = [threading.Thread(target=render) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    done.set()
    reader.join(30)

    assert not failures, failures
    assert len(renders) == 4
    for status, _, text in renders:
        assert status == 422, text
        assert "longer than" in text
    # Two workers: two renders stop at the timeout, the two queued ones after another.
    assert sorted(seconds for _, seconds, _ in renders)[1] < TIMEOUT + MARGIN
    assert elapsed < 2 * TIMEOUT + MARGIN
    assert len(reads) > 20
    # A read queued behind a render would wait a whole render timeout.
    assert max(reads) < TIMEOUT / 2, max(reads)
    assert setup.get(account.url + "/v1/templates/ok").text == "1"


@pytest.mark.parametrize("source", ["{{ [range] }}", "{{ cycler(1, 2) }}", "{{ 1 + 'a' }}"])
def test_no_internal_repr_or_exception_class_reaches_a_client(
    account: TestAccount, source: str
) -> None:
    http = session(account)
    assert http.post(account.url + "/v1/templates/leak", json=source).status_code == 200
    answer = http.get(account.url + "/v1/templates/leak")
    assert answer.status_code == 422
    assert not re.search(r"0x[0-9a-f]{4}|<class |<bound |Error\b", answer.text), answer.text
