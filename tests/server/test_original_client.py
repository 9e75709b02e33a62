"""The 2016 ``kvpio`` client, unchanged, runs its own suite against ``kvpio serve``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kvpio  # type: ignore[import-untyped]
import pytest
from contract import NESTED, TEMPLATE_ROWS

from kvpio_mapping.testing import RunningServer, TestAccount, new_account

BUCKET_VECTORS = [
    ("foo", "bar", "foo", "bar"),
    ("foo", {"bar": {"baz": 123}}, "foo/bar/baz", 123),
    ("foo", NESTED, "foo/1", 1),
    ("foo", NESTED, "foo/2/10", "Ten"),
    ("foo", NESTED, "foo/2/20/1", 46),
]


@pytest.fixture
def client(kvpio_account: TestAccount) -> Iterator[Any]:
    """The ``kvpio`` module pointed at a fresh account, with ``load_json`` on."""
    saved = (kvpio.api_base, kvpio.api_key, kvpio.load_json)
    kvpio.api_base = kvpio_account.url
    kvpio.api_key = kvpio_account.api_key
    kvpio.load_json = True
    try:
        yield kvpio
    finally:
        kvpio.api_base, kvpio.api_key, kvpio.load_json = saved


def test_valid_account(client: Any) -> None:
    status, account = client.Account().get()
    assert status == 200
    assert isinstance(account, dict)
    assert "api_key" not in account
    assert set(account) == {"id", "email", "reads", "size"}


def test_invalid_account(client: Any) -> None:
    client.api_key = "this-is-not-a-key"
    status, _ = client.Account().get()
    assert status == 404


def test_bucket_list(client: Any) -> None:
    status, keys = client.Bucket().list()
    assert status == 200
    assert isinstance(keys, list)


@pytest.mark.parametrize(("key", "data", "path", "expected"), BUCKET_VECTORS)
def test_bucket_set_get_delete(client: Any, key: str, data: Any, path: str, expected: Any) -> None:
    bucket = client.Bucket()
    assert bucket.set(key, data) == (200, "")
    assert bucket.get(path) == (200, expected)
    assert bucket.list() == (200, [key])
    assert bucket.delete(key) == (200, "")
    assert bucket.get(path) == (200, "")
    assert bucket.get(key) == (200, "")


def test_templates_list(client: Any) -> None:
    status, names = client.Templates().list()
    assert status == 200
    assert isinstance(names, list)


@pytest.mark.parametrize(("template", "data", "expected"), TEMPLATE_ROWS)
def test_templates_set_get_delete(client: Any, template: str, data: Any, expected: str) -> None:
    bucket = client.Bucket()
    templates = client.Templates()
    assert bucket.set("foo", data) == (200, "")
    assert templates.set("test", template) == (200, "")
    assert templates.list() == (200, ["test"])
    assert templates.get("test") == (200, expected)
    assert templates.get("test", data={"foo": data}) == (200, expected)
    assert templates.get("test", raw=True) == (200, template)
    assert bucket.delete("foo") == (200, "")
    assert templates.get("test", data={"foo": data}) == (200, expected)
    assert templates.delete("test") == (200, "")
    assert templates.get("test") == (200, "")


def test_without_load_json_values_come_back_as_json_text(client: Any) -> None:
    client.load_json = False
    bucket = client.Bucket()
    assert bucket.set("foo", "bar") == (200, "")
    assert bucket.get("foo") == (200, '"bar"')
    assert bucket.get("nothing") == (200, "")
    assert client.Account().get()[1].startswith("{")


def test_account_reads_and_size_through_the_old_client(
    client: Any, kvpio_server: RunningServer
) -> None:
    bucket = client.Bucket()
    bucket.set("foo", {"bar": {"baz": 123}})
    bucket.get("foo/bar/baz")
    bucket.get("foo")
    status, account = client.Account().get()
    assert status == 200
    assert account["reads"] == 2
    assert account["size"] == len('{"foo":{"bar":{"baz":123}}}')
    other = new_account(kvpio_server)
    client.api_key = other.api_key
    assert client.Account().get()[1]["size"] == 2
