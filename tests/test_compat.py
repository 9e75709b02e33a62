"""The 2016 module API: the original README and test suite, run through ``compat``.

Most tests run twice, once through the original ``kvpio`` 0.2.0 client and
once through ``kvpio_mapping.compat``, against the same real server: the two
must give the same answers.
"""

from __future__ import annotations

import functools
import json
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import kvpio as original  # type: ignore[import-untyped]
import pytest
import requests
from contract import NESTED, TEMPLATE_ROWS

import kvpio_mapping.compat as compat
from kvpio_mapping.errors import TransportError
from kvpio_mapping.transport import Transport

SETTINGS = ("api_key", "api_ver", "api_base", "load_json")


@pytest.fixture(autouse=True)
def _restore_settings() -> Iterator[None]:
    """Both modules' globals are put back after every test."""
    saved = {
        module: {name: getattr(module, name) for name in SETTINGS} for module in (original, compat)
    }
    yield
    for module, settings in saved.items():
        for name, value in settings.items():
            setattr(module, name, value)


@pytest.fixture(params=["original", "compat"])
def kvpio(request: pytest.FixtureRequest, kvpio_account: Any) -> Any:
    """The client module under test, pointed at a fresh account."""
    module: Any = original if request.param == "original" else compat
    module.api_base = kvpio_account.url
    module.api_key = kvpio_account.api_key
    return module


# ---------------------------------------------------------------- the README


def test_readme_account(kvpio: Any) -> None:
    status, text = kvpio.Account().get()
    assert status == 200
    account = json.loads(text)
    assert set(account) == {"id", "email", "reads", "size"}
    assert kvpio.api_key not in text


def test_readme_account_with_load_json(kvpio: Any) -> None:
    kvpio.load_json = True
    status, account = kvpio.Account().get()
    assert status == 200
    assert isinstance(account, dict)
    assert {"id", "email", "reads", "size"} <= set(account)


def test_readme_bucket(kvpio: Any) -> None:
    data = {"foo": 123, "bar": True, "baz": {"boo": 321, "far": False, "faz": [1, 2, 3]}}
    bucket = kvpio.Bucket()
    assert bucket.set("my_key", data) == (200, "")
    status, text = bucket.get("my_key/baz/faz")
    assert status == 200
    assert json.loads(text) == [1, 2, 3]
    kvpio.load_json = True
    assert bucket.get("my_key/baz/faz") == (200, [1, 2, 3])
    assert bucket.get("my_key") == (200, data)
    assert bucket.list() == (200, ["my_key"])


# ---------------------------------------------------------------- the original test suite


BUCKET_VECTORS = [
    ("bar", [("foo", "bar")]),
    ({"bar": {"baz": 123}}, [("foo/bar/baz", 123)]),
    (NESTED, [("foo/1", 1), ("foo/2/10", "Ten"), ("foo/2/20/1", 46)]),
]


@pytest.mark.parametrize(("stored", "reads"), BUCKET_VECTORS)
def test_bucket_vectors(kvpio: Any, stored: Any, reads: list[tuple[str, Any]]) -> None:
    bucket = kvpio.Bucket()
    assert bucket.set("foo", stored) == (200, "")
    status, keys = bucket.list()
    assert (status, json.loads(keys)) == (200, ["foo"])
    for path, expected in reads:
        status, text = bucket.get(path)
        assert status == 200
        assert json.loads(text) == expected
    assert bucket.delete("foo") == (200, "")
    assert bucket.get("foo") == (200, "")
    for path, _ in reads:
        assert bucket.get(path) == (200, "")
    assert json.loads(bucket.list()[1]) == []


@pytest.mark.parametrize(("source", "value", "rendered"), TEMPLATE_ROWS)
def test_template_rows(kvpio: Any, source: str, value: Any, rendered: str) -> None:
    templates = kvpio.Templates()
    assert templates.set("foo", source) == (200, "")
    assert json.loads(templates.list()[1]) == ["foo"]
    assert templates.get("foo", data={"foo": value}) == (200, rendered)
    kvpio.Bucket().set("foo", value)
    assert templates.get("foo") == (200, rendered)
    assert templates.get("foo", raw=True) == (200, source)
    assert templates.delete("foo") == (200, "")
    assert json.loads(templates.list()[1]) == []


def test_missing_template_is_empty(kvpio: Any) -> None:
    assert kvpio.Templates().get("nothing") == (200, "")


def test_load_json_leaves_text_that_is_not_json(kvpio: Any) -> None:
    kvpio.load_json = True
    kvpio.Templates().set("t", "plain {{ 1 + 1 }}")
    assert kvpio.Templates().get("t") == (200, "plain 2")
    assert kvpio.Bucket().get("missing") == (200, "")


def test_keys_are_quoted_like_requests(kvpio: Any) -> None:
    bucket = kvpio.Bucket()
    assert bucket.set("with space/ü", "v") == (200, "")
    assert bucket.get("with space/ü") == (200, '"v"')
    assert json.loads(bucket.list()[1]) == ["with space"]


def test_wrong_key_is_a_404_tuple(kvpio: Any) -> None:
    kvpio.api_key = "not-a-key"
    assert kvpio.Account().get()[0] == 404
    assert kvpio.Bucket().get("foo")[0] == 404
    assert kvpio.Bucket().set("foo", 1)[0] == 404
    assert kvpio.Templates().list()[0] == 404


def test_no_key_is_a_404_tuple(kvpio: Any) -> None:
    kvpio.api_key = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # requests on a None user name
        assert kvpio.Account().get()[0] == 404


def test_empty_key_is_sent_empty(kvpio: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty key is a wrong key, not a cue to use another one from the environment."""
    monkeypatch.setenv("KVPIO_APIKEY", kvpio.api_key)
    kvpio.api_key = ""
    assert kvpio.Account().get()[0] == 404


def test_not_json_fails_before_sending(kvpio: Any, closed_url: str) -> None:
    kvpio.api_base = closed_url  # a request that went out would raise ConnectionError
    with pytest.raises(TypeError):
        kvpio.Bucket().set("foo", {1, 2})
    with pytest.raises(TypeError):
        kvpio.Templates().get("foo", data=object())


def test_nan_is_refused_before_sending(kvpio: Any, closed_url: str) -> None:
    kvpio.api_base = closed_url
    with pytest.raises(requests.exceptions.InvalidJSONError):
        kvpio.Bucket().set("foo", float("nan"))


def test_unsupported_method(kvpio: Any) -> None:
    with pytest.raises(Exception, match="Unsupported method attempted: put"):
        kvpio.Endpoint("bucket").request("put", "foo")


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """compat's transports give up on an unreachable server after 0.5 s, not 4.5 s."""
    monkeypatch.setattr(compat, "Transport", functools.partial(Transport, timeout=0.5))


def test_server_down_raises(kvpio: Any, closed_url: str, quick: None) -> None:
    kvpio.api_base = closed_url
    with pytest.raises(requests.exceptions.ConnectionError):
        kvpio.Account().get()


def test_endpoint_properties(kvpio: Any) -> None:
    kvpio.api_key = "abc"
    kvpio.api_base = "https://api.kvp.io"
    endpoint = kvpio.Endpoint("bucket")
    assert endpoint.name == "bucket"
    assert endpoint.auth == ("abc", "")
    assert endpoint.url == "https://api.kvp.io/v1/bucket"
    assert kvpio.Account().name == "account"
    assert kvpio.Templates().url == "https://api.kvp.io/v1/templates"
    assert kvpio.http_methods == ["get", "post", "delete"]


# ---------------------------------------------------------------- compat only


def test_module_defaults() -> None:
    assert compat.api_key is None
    assert compat.api_ver == "v1"
    assert compat.api_base == "https://api.kvp.io"
    assert compat.load_json is False


def test_connection_error_is_also_ours(closed_url: str, quick: None) -> None:
    compat.api_base = closed_url
    compat.api_key = "k"
    with pytest.raises(TransportError):
        compat.Bucket().get("foo")


def test_one_transport_per_settings(kvpio_account: Any) -> None:
    compat.api_base = kvpio_account.url
    compat.api_key = kvpio_account.api_key
    compat.Bucket().set("a", 1)
    first = compat._TRANSPORTS[(kvpio_account.url, "v1", kvpio_account.api_key)]
    compat.Bucket().get("a")
    compat.Templates().list()
    assert compat._TRANSPORTS[(kvpio_account.url, "v1", kvpio_account.api_key)] is first
    compat.api_key = "other"
    compat.Account().get()
    assert compat._TRANSPORTS[(kvpio_account.url, "v1", "other")] is not first


def test_threads_share_the_module(kvpio_account: Any) -> None:
    compat.api_base = kvpio_account.url
    compat.api_key = kvpio_account.api_key
    compat.Bucket().set("n", [1, 2, 3])
    results: list[tuple[int, Any]] = []

    def read() -> None:
        for _ in range(10):
            results.append(compat.Bucket().get("n/2"))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(200, "2")] * 40


def test_same_answers_as_the_original(kvpio_account: Any) -> None:
    """The same calls through both modules give the same tuples."""
    modules: tuple[Any, ...] = (original, compat)
    for module in modules:
        module.api_base = kvpio_account.url
        module.api_key = kvpio_account.api_key
    calls: list[Callable[[Any], Any]] = [
        lambda m: m.Bucket().set("k", {"a b": [1, {"c": None}]}),
        lambda m: m.Bucket().get("k"),
        lambda m: m.Bucket().get("k/a b/2/c"),
        lambda m: m.Bucket().get("k/a b/9"),
        lambda m: m.Bucket().list(),
        lambda m: m.Templates().set("t", "{{ k['a b'][0] }}!"),
        lambda m: m.Templates().get("t", raw=False),
        lambda m: m.Templates().get("t", data={"k": {"a b": ["x"]}}),
        lambda m: m.Templates().get("t", raw=True),
        lambda m: m.Bucket().delete("k/a b"),
        lambda m: m.Bucket().get("k"),
    ]
    for call in calls:
        assert call(compat) == call(original)
