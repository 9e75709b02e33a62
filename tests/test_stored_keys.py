"""Every key that can be stored can be read back: object keys inside written values
follow the path rules, and a value breaking them is refused before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpio_mapping import InvalidPathError, KVBucket
from kvpio_mapping.cli import main

UNREADABLE = {
    "slash": {"a/b": 1},
    "dot dot": {"..": 2},
    "dot": {".": 3},
    "empty": {"": 4},
    "NUL": {"a\x00b": 5},
    "long": {"x" * 769: 6},
    "nested in a list": {"ok": [1, {"deep": {"a/b": 1}}]},
}


@pytest.fixture
def bucket(kvpio_account):
    return KVBucket(kvpio_account.url, kvpio_account.api_key)


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_value_with_a_key_that_could_not_be_read_back_is_refused_before_sending(
    bucket, count_requests, value
):
    sent = count_requests(bucket)
    with pytest.raises(InvalidPathError, match="could not be read back by path"):
        bucket["weird"] = value
    with pytest.raises(InvalidPathError):
        bucket.update({"fine": 1, "weird": value})
    with pytest.raises(InvalidPathError):
        bucket.view("v")["weird"] = value
    assert sent.count == 0


def test_the_cli_refuses_such_a_value(kvpio_account, capsys, tmp_path, monkeypatch):
    argv = ["--url", kvpio_account.url, f"--api-key={kvpio_account.api_key}"]
    assert main([*argv, "bucket", "set", "weird", '{"a/b": 1}']) == 1
    assert "could not be read back by path" in capsys.readouterr().err
    (tmp_path / "in.json").write_text('{"ok": 1, "weird": {"..": 2}}')
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "bucket", "import", "in.json"]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert KVBucket(kvpio_account.url, kvpio_account.api_key).copy() == {}


def test_keys_that_look_odd_but_are_segments_are_stored_and_read_back(bucket):
    value = {"...": 1, "a b?#%+": 2, "1": 3, "ünï": {"02": 4}, ".x": 5}
    bucket["odd"] = value
    assert dict(bucket.view("odd")) == value
    assert bucket["odd/ünï/02"] == 4


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def objects_below(value: Any, path: str = "v") -> list[tuple[str, Any]]:
    """(path, object or list) for every container inside ``value``."""
    if type(value) not in (dict, list):
        return []
    found = [(path, value)]
    items = value.items() if type(value) is dict else enumerate(value, 1)
    for key, item in items:
        found += objects_below(item, f"{path}/{key}")
    return found


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values)
def test_whatever_is_stored_reads_back_by_every_path_and_view(bucket, value):
    try:
        bucket["v"] = value
    except InvalidPathError:
        assert "v" not in bucket
        return
    bucket.invalidate()
    for path, found in objects_below(value):
        assert bucket[path] == found
        expected = found if type(found) is dict else {str(n): x for n, x in enumerate(found, 1)}
        assert dict(bucket.view(path)) == expected
    del bucket["v"]
