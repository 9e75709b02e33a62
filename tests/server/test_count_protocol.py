"""``?count=true`` (docs/protocol.md, "Counts") against a real ``kvpio serve``."""

from __future__ import annotations

import json
import multiprocessing
from typing import Any

import pytest
import requests

from kvpio_mapping import values
from kvpio_mapping.testing import Api, TestAccount

JSON = "application/json"


def assert_count(response: requests.Response, count: int) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == JSON
    assert response.content == str(count).encode()
    assert response.headers["Kvpio-Count"] == str(count)
    assert "Kvpio-Missing" not in response.headers


def test_count_answers_the_keys_of_an_object_and_the_items_of_a_list(api: Api) -> None:
    assert_count(api.get("/v1/bucket/?count=true"), 0)
    api.post("/v1/bucket/o", json={"k1": 1, "k2": [5, 6, 7], "k3": {}})
    api.post("/v1/bucket/big", json={f"m{i}": "x" * 50 for i in range(2000)})
    assert_count(api.get("/v1/bucket/?count=true"), 2)
    assert_count(api.get("/v1/bucket/o?count=true"), 3)
    assert_count(api.get("/v1/bucket/o/k2?count=true"), 3)
    assert_count(api.get("/v1/bucket/o/k3?count=1"), 0)
    assert_count(api.get("/v1/bucket/big?count=True"), 2000)


def test_count_of_a_missing_path_is_the_missing_answer(api: Api) -> None:
    api.post("/v1/bucket/o", json={"k": [1]})
    for path in ("nothing", "o/nope", "o/k/2", "o/k/1/below"):
        response = api.get(f"/v1/bucket/{path}?count=true")
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["Kvpio-Missing"] == "true"
        assert "Kvpio-Count" not in response.headers


@pytest.mark.parametrize(
    ("value", "kind"), [("s", "string"), (1.5, "number"), (True, "boolean"), (None, "null")]
)
def test_count_of_a_scalar_is_409_naming_it(api: Api, value: Any, kind: str) -> None:
    assert api.post("/v1/bucket/a/b", data=json.dumps(value)).status_code == 200
    response = api.get("/v1/bucket/a/b?count=true")
    assert response.status_code == 409
    assert response.json() == {
        "error": f"cannot count the {kind} at 'a/b': it is not an object or a list"
    }


def test_count_wins_over_keys_and_values_and_a_bad_flag_is_400(api: Api) -> None:
    api.post("/v1/bucket/o", json={"a": 1})
    assert_count(api.get("/v1/bucket/?count=true&keys=true&values=true"), 1)
    assert_count(api.get("/v1/bucket/o?keys=true&count=true"), 1)
    assert api.get("/v1/bucket/?count=yes").status_code == 400
    assert api.get("/v1/bucket/?count=true&keys=maybe").status_code == 400
    assert api.get("/v1/bucket/o?count=false").json() == {"a": 1}


def test_count_has_an_etag_revision_and_head_and_is_not_a_read(api: Api) -> None:
    api.post("/v1/bucket/l", json=[1, 2])
    response = api.get("/v1/bucket/l?count=true")
    assert response.headers["ETag"] == values.etag(b"2")
    assert response.headers["Kvpio-Revision"] == "1"
    again = api.get("/v1/bucket/l?count=true", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    head = api.request("HEAD", "/v1/bucket/l?count=true")
    assert head.status_code == 200 and head.headers["Kvpio-Count"] == "2"
    api.post("/v1/bucket/l/3", json=3)
    assert api.get("/v1/bucket/l?count=true").headers["Kvpio-Revision"] == "2"
    assert api.get("/v1/account/").json()["reads"] == 0


def _write(url: str, api_key: str, name: str) -> None:
    """Adds and removes top-level keys, object members and list items, one request each."""
    session = requests.Session()
    session.auth = (api_key, "")
    bucket = f"{url}/v1/bucket"
    for i in range(30):
        session.post(f"{bucket}/{name}-{i}", json=i).raise_for_status()
        session.post(f"{bucket}/shared/{name}-{i}", json=[i] * (i % 3)).raise_for_status()
        session.post(f"{bucket}/log?op=append", json="x" * 200).raise_for_status()
        session.post(f"{bucket}/m?op=merge", json={name: i}).raise_for_status()
        commit = {"operations": [{"op": "set", "path": f"c/{name}-{i}", "value": i}]}
        session.post(f"{bucket}/?commit=true", json=commit).raise_for_status()
        if i % 3 == 0:
            session.delete(f"{bucket}/{name}-{i // 2}").raise_for_status()
            session.delete(f"{bucket}/shared/{name}-{i // 3}").raise_for_status()
            session.delete(f"{bucket}/log/1").raise_for_status()
        session.close()  # a new connection each turn: the workers share the writes


def test_counts_stay_exact_under_processes_writing_through_both_workers(
    kvpio_account: TestAccount, api: Api
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_write, args=(kvpio_account.url, kvpio_account.api_key, f"p{n}"))
        for n in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    data = json.loads(api.get("/v1/bucket/?values=true").content)
    assert_count(api.get("/v1/bucket/?count=true"), len(data))
    for key in ("shared", "log", "m", "c"):
        assert_count(api.get(f"/v1/bucket/{key}?count=true"), len(data[key]))
    assert len(data["c"]) == 4 * 30 and len(data["log"]) == 4 * (30 - 10)
