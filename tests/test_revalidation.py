"""An expired cache entry is revalidated with its ETag: a 304 costs no body."""

from __future__ import annotations

from typing import Any

import pytest

from kvpio_mapping import KVBucket


@pytest.fixture
def answers(bucket: KVBucket) -> list[tuple[int, dict[str, Any]]]:
    """(status, request headers) of every request the bucket sends."""
    seen: list[tuple[int, dict[str, Any]]] = []
    send = bucket._transport.request

    def request(method: str, target: str, **kwargs: Any) -> Any:
        response = send(method, target, **kwargs)
        seen.append((response.status_code, dict(kwargs.get("headers") or {})))
        return response

    bucket._transport.request = request  # type: ignore[method-assign]
    return seen


@pytest.fixture
def bucket(kvpio_account: Any, clock: Any) -> KVBucket:
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=5, timer=clock)


@pytest.fixture
def other(kvpio_account: Any) -> KVBucket:
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


def test_an_expired_unchanged_value_is_revalidated_with_a_304(bucket, other, clock, answers):
    other["doc"] = {"text": "x" * 1000}
    assert bucket["doc"] == {"text": "x" * 1000}
    clock.now += 6
    assert bucket["doc"] == {"text": "x" * 1000}
    assert [status for status, _ in answers] == [200, 304]
    assert "If-None-Match" in answers[1][1]


def test_a_revalidated_entry_is_fresh_again_for_a_ttl(bucket, other, clock, answers):
    other["doc"] = [1, 2]
    bucket["doc"]
    clock.now += 6
    bucket["doc"]
    clock.now += 4
    assert bucket["doc"] == [1, 2]
    assert len(answers) == 2


def test_an_expired_value_changed_elsewhere_is_read_anew(bucket, other, clock, answers):
    other["doc"] = {"v": 1}
    bucket["doc"]
    other["doc"] = {"v": 2}
    clock.now += 6
    assert bucket["doc"] == {"v": 2}
    assert [status for status, _ in answers] == [200, 200]


def test_a_value_deleted_elsewhere_is_missing_after_expiry(bucket, other, clock):
    other["doc"] = 1
    bucket["doc"]
    del other["doc"]
    clock.now += 6
    assert "doc" not in bucket


def test_this_clients_write_is_never_revalidated_from_the_old_entry(bucket, clock, answers):
    bucket["doc"] = 1
    bucket["doc"]
    clock.now += 6
    bucket["doc"] = 2
    assert bucket["doc"] == 2
    assert all("If-None-Match" not in headers for _, headers in answers)
