"""Revisions, conditional writes, atomic operations and commits on the wire (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from kvpio_mapping.server.storage.base import MAX_COMMIT
from kvpio_mapping.testing import Api

JSON = "application/json"


def revision(response: requests.Response) -> int:
    return int(response.headers["Kvpio-Revision"])


def commit(api: Api, operations: list[Any], checks: list[Any] | None = None) -> requests.Response:
    body: dict[str, Any] = {"operations": operations}
    if checks is not None:
        body["checks"] = checks
    return api.post("/v1/bucket/?commit=true", json=body)


# revisions


def test_every_answer_carries_the_revision_each_write_raises_by_one(api: Api) -> None:
    assert revision(api.get("/v1/bucket/")) == 0
    assert revision(api.post("/v1/bucket/a", json=1)) == 1
    assert revision(api.post("/v1/bucket/", json={"b": 2, "c": 3})) == 2
    assert revision(api.delete("/v1/bucket/nothing")) == 3
    assert revision(api.post("/v1/templates/t", json="x")) == 4
    for url in ("/v1/bucket/a", "/v1/bucket/", "/v1/bucket/?values=true", "/v1/templates/t"):
        assert revision(api.get(url)) == 4, url
    assert revision(api.get("/v1/account/")) == 4
    assert revision(api.delete("/v1/bucket/?all=true")) == 5


def test_refused_writes_leave_the_revision(api: Api) -> None:
    api.post("/v1/bucket/l", json=[1])
    assert api.post("/v1/bucket/l/7", json=1).status_code == 400
    assert api.post("/v1/bucket/l", json=2, headers={"If-None-Match": "*"}).status_code == 412
    assert revision(api.get("/v1/bucket/l")) == 1


def test_error_answers_to_an_account_carry_its_revision_and_others_none(api: Api) -> None:
    api.post("/v1/bucket/l", json=[1])
    refused = api.post("/v1/bucket/l/7", json=1)
    assert (refused.status_code, revision(refused)) == (400, 1)
    bad_path = api.get("/v1/bucket/a%FF")
    assert (bad_path.status_code, revision(bad_path)) == (400, 1)
    unknown = requests.get(api.url + "/v1/bucket/l", auth=("no-such-key", ""))
    assert unknown.status_code == 404
    assert "Kvpio-Revision" not in unknown.headers
    assert "Kvpio-Revision" not in requests.get(api.url + "/openapi.json").headers


# conditional writes


def test_if_match_with_the_current_tag_writes(api: Api) -> None:
    api.post("/v1/bucket/k", json={"n": 1})
    tag = api.get("/v1/bucket/k").headers["ETag"]
    assert api.post("/v1/bucket/k", json={"n": 2}, headers={"If-Match": tag}).status_code == 200
    assert api.get("/v1/bucket/k").json() == {"n": 2}


def test_stale_if_match_changes_nothing_and_returns_the_current_value(api: Api) -> None:
    api.post("/v1/bucket/k", json={"n": 1})
    stale = api.get("/v1/bucket/k").headers["ETag"]
    api.post("/v1/bucket/k", json={"n": 2})
    current = api.get("/v1/bucket/k")
    for method in ("POST", "DELETE"):
        refused = api.request(method, "/v1/bucket/k", json=3, headers={"If-Match": stale})
        assert refused.status_code == 412
        assert refused.headers["Content-Type"] == JSON
        assert refused.content == b'{"n":2}'
        assert refused.headers["ETag"] == current.headers["ETag"]
        assert revision(refused) == 2
    assert api.get("/v1/bucket/k").json() == {"n": 2}


def test_if_match_on_a_missing_path_answers_missing(api: Api) -> None:
    for tag in ('"0"', "*"):
        refused = api.post("/v1/bucket/k", json=1, headers={"If-Match": tag})
        assert refused.status_code == 412
        assert refused.headers["Kvpio-Missing"] == "true"
        assert refused.content == b""
    assert api.get("/v1/bucket/k").headers["Kvpio-Missing"] == "true"


def test_delete_and_pop_if_match(api: Api) -> None:
    api.post("/v1/bucket/", json={"a": 1, "b": 2})
    tag_a = api.get("/v1/bucket/a").headers["ETag"]
    assert api.delete("/v1/bucket/a", headers={"If-Match": tag_a}).content == b""
    tag_b = api.get("/v1/bucket/b").headers["ETag"]
    popped = api.delete("/v1/bucket/b?pop=true", headers={"If-Match": tag_b})
    assert popped.content == b"2"
    assert api.get("/v1/bucket/").json() == []


def test_if_match_with_two_tags_is_refused(api: Api) -> None:
    response = api.post("/v1/bucket/k", json=1, headers={"If-Match": '"a", "b"'})
    assert response.status_code == 400


# atomic operations on one path


def test_increment_returns_the_new_value(api: Api) -> None:
    assert api.post("/v1/bucket/n?op=increment", json=5).content == b"5"
    assert api.post("/v1/bucket/n?op=increment", json=-1.5).content == b"3.5"
    assert api.get("/v1/bucket/n").json() == 3.5


def test_increment_of_a_string_is_a_conflict_and_changes_nothing(api: Api) -> None:
    api.post("/v1/bucket/s", json="five")
    response = api.post("/v1/bucket/s?op=increment", json=1)
    assert response.status_code == 409
    assert response.json() == {"error": "cannot increment the string at 's': it is not a number"}
    assert api.get("/v1/bucket/s").json() == "five"


@pytest.mark.parametrize("body", ['"1"', "true", "null", "[1]"])
def test_increment_by_a_non_number_is_refused(api: Api, body: str) -> None:
    response = api.post("/v1/bucket/n?op=increment", data=body)
    assert response.status_code == 400
    assert "needs a number" in response.json()["error"]


def test_append_returns_the_position(api: Api) -> None:
    assert api.post("/v1/bucket/l?op=append", json="a").content == b"1"
    assert api.post("/v1/bucket/l?op=append", json={"b": 1}).content == b"2"
    assert api.get("/v1/bucket/l").json() == ["a", {"b": 1}]
    api.post("/v1/bucket/o", json={})
    assert api.post("/v1/bucket/o?op=append", json=1).status_code == 409


def test_merge_sets_members_shallowly(api: Api) -> None:
    api.post("/v1/bucket/m", json={"a": 1, "b": {"c": 1}})
    assert api.post("/v1/bucket/m?op=merge", json={"b": {"d": 2}, "e": 3}).content == b""
    assert api.get("/v1/bucket/m").json() == {"a": 1, "b": {"d": 2}, "e": 3}
    assert api.post("/v1/bucket/m?op=merge", json=[1]).status_code == 400


def test_unknown_op_is_refused(api: Api) -> None:
    response = api.post("/v1/bucket/n?op=multiply", json=2)
    assert response.status_code == 400
    assert "op must be one of" in response.json()["error"]


def test_operation_with_a_stale_if_match_is_refused(api: Api) -> None:
    api.post("/v1/bucket/n", json=1)
    response = api.post("/v1/bucket/n?op=increment", json=1, headers={"If-Match": '"old"'})
    assert response.status_code == 412
    assert response.content == b"1"


# commits


def test_commit_applies_operations_and_answers_results(api: Api) -> None:
    api.post("/v1/bucket/a", json={"x": 1})
    tag = api.get("/v1/bucket/a").headers["ETag"]
    response = commit(
        api,
        [
            {"op": "set", "path": "a/x", "value": 2},
            {"op": "increment", "path": "n", "value": 3},
            {"op": "append", "path": "l", "value": "z"},
            {"op": "merge", "path": "m", "value": {"k": True}},
            {"op": "delete", "path": "gone"},
        ],
        [{"path": "a", "etag": tag}, {"path": "b", "etag": None}, {"path": "a/x", "etag": "*"}],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"revision": 2, "results": [None, 3, 1, None, None]}
    assert revision(response) == 2
    assert api.get("/v1/bucket/?values=true").json() == {
        "a": {"x": 2},
        "n": 3,
        "l": ["z"],
        "m": {"k": True},
    }


def test_commit_with_one_failing_check_applies_nothing(api: Api) -> None:
    api.post("/v1/bucket/", json={"a": 1, "b": [2]})
    tag_a = api.get("/v1/bucket/a").headers["ETag"]
    tag_b = api.get("/v1/bucket/b").headers["ETag"]
    response = commit(
        api,
        [{"op": "set", "path": "a", "value": 10}, {"op": "delete", "path": "b"}],
        [{"path": "a", "etag": tag_a}, {"path": "b", "etag": None}, {"path": "c", "etag": "*"}],
    )
    assert response.status_code == 412
    assert response.json() == {
        "error": "the value changed at 'b', 'c'",
        "failed": [
            {"check": 1, "path": "b", "etag": tag_b, "value": [2]},
            {"check": 2, "path": "c", "etag": None},
        ],
    }
    assert revision(response) == 1
    assert api.get("/v1/bucket/?values=true").json() == {"a": 1, "b": [2]}


def test_commit_with_a_conflicting_operation_applies_nothing(api: Api) -> None:
    api.post("/v1/bucket/s", json="text")
    response = commit(
        api,
        [{"op": "set", "path": "a", "value": 1}, {"op": "increment", "path": "s", "value": 1}],
    )
    assert response.status_code == 409
    assert api.get("/v1/bucket/a").headers["Kvpio-Missing"] == "true"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"operations": {}},
        {"operations": [], "extra": 1},
        {"operations": [{"op": "pop", "path": "a"}]},
        {"operations": [{"op": "set", "path": "a"}]},
        {"operations": [{"op": "delete", "path": "a", "value": 1}]},
        {"operations": [{"op": "set", "path": "a//b", "value": 1}]},
        {"operations": [{"op": "set", "path": 1, "value": 1}]},
        {"operations": [], "checks": [{"path": "a"}]},
        {"operations": [], "checks": [{"path": "a", "etag": 5}]},
        {"operations": [{"op": "set", "path": "a", "value": 1}] * (MAX_COMMIT + 1)},
    ],
)
def test_malformed_commits_are_refused(api: Api, body: Any) -> None:
    response = api.post("/v1/bucket/?commit=true", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert revision(response) == 0


def test_commit_of_the_most_operations_applies(api: Api) -> None:
    operations = [{"op": "increment", "path": "n", "value": 1}] * MAX_COMMIT
    response = commit(api, operations, [{"path": "n", "etag": None}] * MAX_COMMIT)
    assert response.status_code == 200
    assert response.json()["results"][-1] == MAX_COMMIT
