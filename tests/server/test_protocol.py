"""Every row of kvpio-v1 and docs/protocol.md, against a real ``kvpio serve``."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from contract import NESTED, TEMPLATE_ROWS

from kvpio_mapping import KVBucket, values
from kvpio_mapping.server.app import LARGE_BODY
from kvpio_mapping.testing import Api, RunningServer, TestAccount, run_server

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

VECTORS = [
    ("bar", "foo", b'"bar"'),
    ({"bar": {"baz": 123}}, "foo/bar/baz", b"123"),
    (NESTED, "foo/1", b"1"),
    (NESTED, "foo/2/10", b'"Ten"'),
    (NESTED, "foo/2/20/1", b"46"),
]


def assert_empty(response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert response.headers["Content-Length"] == "0"


def assert_missing(response: requests.Response) -> None:
    assert_empty(response)
    assert response.headers["Kvpio-Missing"] == "true"


def assert_json(response: requests.Response, body: bytes) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == JSON
    assert response.content == body


def assert_error(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == JSON
    assert set(response.json()) == {"error"}
    assert response.json()["error"]


# Part 1: account


def test_account_answers_id_email_reads_size_and_never_the_key(api: Api) -> None:
    response = api.get("/v1/account/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    account = response.json()
    assert set(account) == {"id", "email", "reads", "size"}
    assert account["reads"] == 0 and account["size"] == 2
    assert api.api_key not in response.text


def test_account_url_without_trailing_slash_works_too(api: Api) -> None:
    assert api.get("/v1/account").json() == api.get("/v1/account/").json()


UNKNOWN_KEY_REQUESTS = [
    ("GET", "/v1/account/"),
    ("GET", "/v1/account"),
    ("GET", "/v1/bucket/"),
    ("GET", "/v1/bucket/foo"),
    ("GET", "/v1/bucket/?values=true"),
    ("POST", "/v1/bucket/foo"),
    ("POST", "/v1/bucket/"),
    ("DELETE", "/v1/bucket/foo"),
    ("DELETE", "/v1/bucket/?all=true"),
    ("HEAD", "/v1/bucket/foo"),
    ("GET", "/v1/templates/"),
    ("GET", "/v1/templates/t"),
    ("GET", "/v1/templates/t?raw=True"),
    ("POST", "/v1/templates/t"),
    ("DELETE", "/v1/templates/t"),
    ("PUT", "/v1/bucket/foo"),
    ("POST", "/v1/account/"),
    ("GET", "/v1/bucket/a//b"),
]


@pytest.mark.parametrize(("method", "url"), UNKNOWN_KEY_REQUESTS)
@pytest.mark.parametrize("key", ["not-a-key", ""])
def test_unknown_key_is_404_on_every_endpoint(
    kvpio_server: RunningServer, method: str, url: str, key: str
) -> None:
    response = requests.request(method, kvpio_server.url + url, data=b'"x"', auth=(key, ""))
    assert response.status_code == 404
    if method != "HEAD":
        assert response.json() == {"error": "unknown API key"}


def test_missing_auth_header_is_404(kvpio_server: RunningServer) -> None:
    response = requests.get(kvpio_server.url + "/v1/bucket/")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown API key"}


# Part 1: bucket


@pytest.mark.parametrize("url", ["/v1/bucket/", "/v1/bucket"])
def test_bucket_list_is_a_json_list_in_insertion_order(api: Api, url: str) -> None:
    assert_json(api.get(url), b"[]")
    for key in ["zeta", "alpha", "mid"]:
        assert_empty(api.post("/v1/bucket/" + key, json=1))
    assert_json(api.get(url), b'["zeta","alpha","mid"]')


@pytest.mark.parametrize(("stored", "path", "expected"), VECTORS)
def test_vector_set_get_delete(api: Api, stored: Any, path: str, expected: bytes) -> None:
    assert_empty(api.post("/v1/bucket/foo", json=stored))
    assert_json(api.get("/v1/bucket/" + path), expected)
    assert_empty(api.delete("/v1/bucket/foo"))
    assert_missing(api.get("/v1/bucket/foo"))
    assert_missing(api.get("/v1/bucket/" + path))


def test_after_delete_foo_deep_reads_are_missing(api: Api) -> None:
    api.post("/v1/bucket/foo", json=NESTED)
    api.delete("/v1/bucket/foo")
    assert_missing(api.get("/v1/bucket/foo"))
    assert_missing(api.get("/v1/bucket/foo/2/20/1"))


def test_string_values_are_quoted_json(api: Api) -> None:
    api.post("/v1/bucket/foo", json="bar")
    assert_json(api.get("/v1/bucket/foo"), b'"bar"')


@pytest.mark.parametrize("path", ["nothing", "foo/9", "foo/0", "foo/2/x", "foo/1/deeper"])
def test_missing_key_or_path_is_200_empty_with_header(api: Api, path: str) -> None:
    api.post("/v1/bucket/foo", json=NESTED)
    assert_missing(api.get("/v1/bucket/" + path))


def test_numeric_looking_object_keys_are_keys_not_positions(api: Api) -> None:
    api.post("/v1/bucket/obj", json={"2": "two", "1": "one"})
    assert_json(api.get("/v1/bucket/obj/2"), b'"two"')
    assert_json(api.get("/v1/bucket/obj/1"), b'"one"')


def test_writes_create_missing_and_scalar_parents_as_objects(api: Api) -> None:
    assert_empty(api.post("/v1/bucket/a/b/c", json=1))
    assert_json(api.get("/v1/bucket/a"), b'{"b":{"c":1}}')
    api.post("/v1/bucket/s", json=5)
    assert_empty(api.post("/v1/bucket/s/t", json=True))
    assert_json(api.get("/v1/bucket/s"), b'{"t":true}')


def test_list_writes_replace_append_and_refuse_other_positions(api: Api) -> None:
    api.post("/v1/bucket/l", json=[1, 2])
    assert_empty(api.post("/v1/bucket/l/1", json="one"))
    assert_empty(api.post("/v1/bucket/l/3", json=3))
    assert_json(api.get("/v1/bucket/l"), b'["one",2,3]')
    for segment in ["5", "0", "x"]:
        assert_error(api.post("/v1/bucket/l/" + segment, json=0), 400)
    assert_json(api.get("/v1/bucket/l"), b'["one",2,3]')


def test_delete_removes_everything_below_and_list_items_move_up(api: Api) -> None:
    api.post("/v1/bucket/l", json=["a", {"x": 1}, "c"])
    assert_empty(api.delete("/v1/bucket/l/2"))
    assert_json(api.get("/v1/bucket/l"), b'["a","c"]')
    assert_json(api.get("/v1/bucket/l/2"), b'"c"')


def test_deleting_what_is_missing_is_not_an_error(api: Api) -> None:
    assert_empty(api.delete("/v1/bucket/never/was"))


def test_empty_write_body_is_400(api: Api) -> None:
    assert_error(api.post("/v1/bucket/foo", data=b""), 400)


@pytest.mark.parametrize(
    "body",
    [b"{", b"NaN", b"[Infinity]", b"-Infinity", b"'x'", b"\xff", b"1e400", b'{"a": [-1e999]}'],
)
def test_invalid_json_is_400_and_stores_nothing(api: Api, body: bytes) -> None:
    response = api.post("/v1/bucket/foo", data=body)
    assert_error(response, 400)
    assert "JSON" in response.json()["error"]
    assert_missing(api.get("/v1/bucket/foo"))


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("foo", b'"a\\ud800b"', "\\ud800 is a lone surrogate, not a character"),
        ("foo", b'{"x": ["\\uDC00"]}', "\\udc00 is a lone surrogate, not a character"),
        ("", b'{"k\\ud83d": 1}', "\\ud83d is a lone surrogate, not a character"),
        ("foo", b"7" * 5000, "an integer has more than 4300 digits"),
        ("", b'{"foo": -' + b"7" * 5000 + b"}", "an integer has more than 4300 digits"),
    ],
    ids=["lone high", "lone low, nested", "in a batch's key", "long integer", "in a batch"],
)
def test_json_no_server_could_store_is_400_saying_why_in_its_own_words(
    api: Api, path: str, body: bytes, error: str
) -> None:
    response = api.post(f"/v1/bucket/{path}", data=body)
    assert_error(response, 400)
    assert response.json()["error"] == f"invalid JSON: {error}"
    assert_missing(api.get("/v1/bucket/foo"))
    assert_empty(api.post("/v1/bucket/foo", data=b'"\\ud83d\\ude00 \\\\ud800"'))
    assert api.get("/v1/bucket/foo").json() == "\U0001f600 \\ud800"  # a pair; no escape


def test_too_deep_json_is_400(api: Api) -> None:
    assert_error(api.post("/v1/bucket/foo", data=b"[" * 101 + b"]" * 101), 400)
    assert_error(api.post("/v1/bucket/foo", data=b"[" * 100_000), 400)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/bucket/" + "/".join(["a"] * 33),
        "/v1/bucket/" + "x" * 769,
        "/v1/bucket/" + quote("é" * 385),
        "/v1/bucket/a%2Fb",
        "/v1/bucket/a%2fb",
        "/v1/bucket/a//b",
        "/v1/bucket/a/",
        "/v1/bucket/%00",
        "/v1/bucket/%2E%2E",
        "/v1/bucket/%2e",
        "/v1/bucket/%FF",
        "/v1/bucket/%C3",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_invalid_paths_are_400(api: Api, path: str, method: str) -> None:
    status, headers, body = api.raw(method, path, b"1")
    assert status == 400, body
    assert headers["content-type"] == JSON
    assert set(json.loads(body)) == {"error"}


def test_limits_themselves_are_allowed(api: Api) -> None:
    deep = "/".join(["a"] * 32)
    assert_empty(api.post("/v1/bucket/" + deep, json=1))
    assert_json(api.get("/v1/bucket/" + deep), b"1")
    long = "x" * 768
    assert_empty(api.post("/v1/bucket/" + long, json=2))
    assert_json(api.get("/v1/bucket/" + long), b"2")


@pytest.mark.parametrize(
    "key",
    ["with space", "what?", "hash#tag", "per%cent", "plus+sign", "Grüße", "日本", "a&b=c", ";"],
)
def test_awkward_keys_round_trip_when_percent_encoded(api: Api, key: str) -> None:
    url = "/v1/bucket/" + quote(key, safe="")
    assert_empty(api.post(url, json=key))
    assert_json(api.get(url), json.dumps(key, ensure_ascii=False).encode())
    assert api.get("/v1/bucket/").json() == [key]
    assert api.get("/v1/bucket/?values=true").json() == {key: key}


def test_plus_in_a_path_is_a_plus_not_a_space(api: Api) -> None:
    api.post("/v1/bucket/a+b", json=1)
    assert api.get("/v1/bucket/").json() == ["a+b"]


# Part 1: templates


def test_template_list_is_a_json_list(api: Api) -> None:
    assert_json(api.get("/v1/templates/"), b"[]")
    api.post("/v1/templates/one", json="1")
    api.post("/v1/templates/two", json="2")
    assert_json(api.get("/v1/templates/"), b'["one","two"]')
    assert_json(api.get("/v1/templates"), b'["one","two"]')


@pytest.mark.parametrize(("source", "stored", "rendered"), TEMPLATE_ROWS)
def test_template_rows(api: Api, source: str, stored: Any, rendered: str) -> None:
    assert_empty(api.post("/v1/templates/t", json=source))
    assert_empty(api.post("/v1/bucket/foo", json=stored))
    for query in ["", "?raw=False", "?raw=false", "?raw=0"]:
        response = api.get("/v1/templates/t" + query)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == TEXT
        assert response.content == rendered.encode()
        assert response.headers["Kvpio-Names"] == "foo"
    for query in ["?raw=True", "?raw=true", "?raw=1"]:
        response = api.get("/v1/templates/t" + query)
        assert response.headers["Content-Type"] == TEXT
        assert response.content == source.encode()
    api.delete("/v1/bucket/foo")
    response = api.get("/v1/templates/t?raw=False", json={"foo": stored})
    assert response.content == rendered.encode()
    assert_empty(api.delete("/v1/templates/t"))
    assert_missing(api.get("/v1/templates/t"))
    assert response.headers["Content-Type"] == TEXT


def test_template_data_overrides_bucket_values(api: Api) -> None:
    api.post("/v1/templates/t", json="{{ foo }}-{{ other }}")
    api.post("/v1/bucket/foo", json="stored")
    assert api.get("/v1/templates/t").text == "stored-"
    assert api.get("/v1/templates/t", json={"foo": "given", "other": 1}).text == "given-1"


@pytest.mark.parametrize("raw", ["yes", "TRUE", "2", ""])
def test_bad_raw_is_400(api: Api, raw: str) -> None:
    api.post("/v1/templates/t", json="x")
    assert_error(api.get("/v1/templates/t?raw=" + raw), 400)


@pytest.mark.parametrize("body", [b"[1]", b'"x"', b"null", b"{"])
def test_template_data_must_be_a_json_object(api: Api, body: bytes) -> None:
    api.post("/v1/templates/t", json="x")
    assert_error(api.get("/v1/templates/t", data=body), 400)


def test_undefined_names_render_empty(api: Api) -> None:
    api.post("/v1/templates/t", json="[{{ nothing.here }}]")
    assert api.get("/v1/templates/t").text == "[]"


def test_templates_and_bucket_are_separate_namespaces(api: Api) -> None:
    api.post("/v1/templates/foo", json="template")
    assert_missing(api.get("/v1/bucket/foo"))
    assert api.get("/v1/bucket/").json() == []


def test_template_names_are_flat(api: Api) -> None:
    assert_empty(api.post("/v1/templates/a/b", json="ab"))
    assert api.get("/v1/templates/").json() == ["a/b"]
    assert api.get("/v1/templates/a/b?raw=1").text == "ab"
    assert_missing(api.get("/v1/templates/a"))


@pytest.mark.parametrize("body", [b"1", b'["x"]', b"{}", b"null"])
def test_template_source_must_be_a_json_string(api: Api, body: bytes) -> None:
    assert_error(api.post("/v1/templates/t", data=body), 400)


def test_template_syntax_error_is_422_at_set_time(api: Api) -> None:
    assert_error(api.post("/v1/templates/t", json="{{ unclosed "), 422)
    assert_missing(api.get("/v1/templates/t"))


def test_template_source_over_64_kib_is_413(api: Api) -> None:
    assert_error(api.post("/v1/templates/t", json="x" * (64 * 1024 + 1)), 413)


def test_template_render_failure_is_422(api: Api) -> None:
    api.post("/v1/templates/t", json="{{ 1 // 0 }}")
    assert_error(api.get("/v1/templates/t"), 422)


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(10 ** 9) | list | length }}",
        "{{ 'x' * (2 ** 30) }}",
        "{% for i in range(2000) %}{{ 'y' * 1000 }}{% endfor %}",
        "{{ 10 ** 100000 }}",
    ],
)
def test_template_over_a_render_limit_is_422(api: Api, source: str) -> None:
    assert_empty(api.post("/v1/templates/t", json=source))
    assert_error(api.get("/v1/templates/t"), 422)


def test_template_sandbox_hides_internals(api: Api) -> None:
    api.post("/v1/bucket/foo", json={"a": 1})
    api.post("/v1/templates/t", json="{{ ''.__class__ }}{{ foo.__class__.__mro__ }}")
    response = api.get("/v1/templates/t")
    assert response.status_code in (200, 422)
    assert "class" not in response.text


# Part 1: account counters


def test_reads_count_served_values_and_templates_only(api: Api) -> None:
    api.post("/v1/bucket/foo", json={"a": 1})
    api.post("/v1/templates/t", json="{{ foo.a }}")
    api.get("/v1/bucket/foo")
    api.get("/v1/bucket/foo/a")
    api.get("/v1/templates/t")
    api.get("/v1/templates/t?raw=True")
    api.get("/v1/bucket/missing")
    api.get("/v1/templates/missing")
    api.get("/v1/bucket/")
    api.get("/v1/templates/")
    api.get("/v1/bucket/foo?keys=true")
    assert api.get("/v1/account/").json()["reads"] == 4


def test_size_is_the_bytes_of_the_whole_bucket(api: Api) -> None:
    api.post("/v1/bucket/foo", json={"é": [1, 2.5, None, "x"]})
    api.post("/v1/bucket/bar", json="日本")
    whole = api.get("/v1/bucket/?values=true").content
    assert api.get("/v1/account/").json()["size"] == len(whole)


# Part 2: extensions


def test_values_true_answers_the_whole_bucket(api: Api) -> None:
    api.post("/v1/bucket/b", json=[1])
    api.post("/v1/bucket/a", json={"x": None})
    assert_json(api.get("/v1/bucket/?values=true"), b'{"b":[1],"a":{"x":null}}')


def test_keys_true_lists_children(api: Api) -> None:
    api.post("/v1/bucket/o", json={"k1": 1, "k2": [5, 6]})
    assert_json(api.get("/v1/bucket/o?keys=true"), b'["k1","k2"]')
    assert_json(api.get("/v1/bucket/o/k2?keys=true"), b'["1","2"]')
    assert_json(api.get("/v1/bucket/o/k1?keys=true"), b"[]")
    assert_json(api.get("/v1/bucket/none?keys=true"), b"[]")
    assert_json(api.get("/v1/bucket/?keys=true"), b'["o"]')


def test_unknown_query_parameters_are_ignored(api: Api) -> None:
    api.post("/v1/bucket/foo?whatever=1", json=1)
    assert_json(api.get("/v1/bucket/foo?x=y&z"), b"1")


def test_batch_post_sets_every_pair(api: Api) -> None:
    assert_empty(api.post("/v1/bucket/", json={"a/b": 1, "c": [1], "c/2": 2}))
    assert_json(api.get("/v1/bucket/?values=true"), b'{"a":{"b":1},"c":[1,2]}')


@pytest.mark.parametrize("bad", [{"ok": 1, "a//b": 2}, {"ok": 1, "l/9": 2}, {"ok": 1, "": 2}])
def test_batch_post_is_all_or_none(api: Api, bad: dict[str, Any]) -> None:
    api.post("/v1/bucket/l", json=[0])
    assert_error(api.post("/v1/bucket/", json=bad), 400)
    assert_json(api.get("/v1/bucket/?values=true"), b'{"l":[0]}')


def test_batch_post_takes_a_list_of_pairs_for_repeated_paths(api: Api) -> None:
    assert_empty(api.post("/v1/bucket/", json=[["a", 1], ["b/c", 2], ["a", 3]]))
    assert_json(api.get("/v1/bucket/?values=true"), b'{"a":3,"b":{"c":2}}')


@pytest.mark.parametrize("body", [[1], [["a"]], [["a", 1, 2]], [[1, 1]], "x", 1, None])
def test_batch_post_needs_an_object_or_pairs(api: Api, body: Any) -> None:
    assert_error(api.post("/v1/bucket/", json=body), 400)
    assert_json(api.get("/v1/bucket/"), b"[]")


def test_delete_all_needs_all_true_and_keeps_templates(api: Api) -> None:
    api.post("/v1/bucket/a", json=1)
    api.post("/v1/templates/t", json="x")
    assert_error(api.delete("/v1/bucket/"), 400)
    assert_error(api.delete("/v1/bucket/?all=false"), 400)
    assert_json(api.get("/v1/bucket/"), b'["a"]')
    assert_empty(api.delete("/v1/bucket/?all=true"))
    assert_json(api.get("/v1/bucket/"), b"[]")
    assert_json(api.get("/v1/templates/"), b'["t"]')


@pytest.mark.parametrize("header", [{"If-Match": '"nothing-has-this-tag"'}, {"If-None-Match": "*"}])
def test_delete_all_with_a_condition_is_400_and_deletes_nothing(
    api: Api, header: dict[str, str]
) -> None:
    api.post("/v1/bucket/a", json=1)
    assert_error(api.delete("/v1/bucket/?all=true", headers=header), 400)
    assert_json(api.get("/v1/bucket/a"), b"1")


@pytest.mark.parametrize("header", [{"If-Match": '"nothing-has-this-tag"'}, {"If-None-Match": "*"}])
def test_a_template_write_with_a_condition_is_400_and_changes_nothing(
    api: Api, header: dict[str, str]
) -> None:
    api.post("/v1/templates/t", json="before")
    assert_error(api.post("/v1/templates/t", json="after", headers=header), 400)
    assert_error(api.delete("/v1/templates/t", headers=header), 400)
    assert_error(api.delete("/v1/templates/t?pop=true", headers=header), 400)
    assert api.get("/v1/templates/t?raw=true").text == "before"


def test_a_flag_of_another_write_is_400_not_a_write_of_another_meaning(api: Api) -> None:
    api.post("/v1/bucket/a", json=5)
    commit = {"operations": [{"op": "increment", "path": "a", "value": 1}]}
    assert_error(api.post("/v1/bucket/a?commit=true", json=commit), 400)
    assert_error(api.post("/v1/bucket/?op=increment", json={"a": 1}), 400)
    assert_error(api.post("/v1/bucket/?commit=true&op=increment", json=commit), 400)
    assert_json(api.get("/v1/bucket/a"), b"5")
    assert_empty(api.post("/v1/bucket/a?commit=false", json=6))
    assert_json(api.get("/v1/bucket/a"), b"6")


def test_pop_returns_the_removed_value_or_missing(api: Api) -> None:
    api.post("/v1/bucket/foo", json=NESTED)
    assert_json(api.delete("/v1/bucket/foo/2?pop=true"), b'{"10":"Ten","20":[46],"2":"two"}')
    assert_json(api.get("/v1/bucket/foo"), b"[1,3]")
    assert_missing(api.delete("/v1/bucket/nothing?pop=true"))


def test_template_pop_returns_the_source_or_missing(api: Api) -> None:
    api.post("/v1/templates/t", json="{{ x }}")
    response = api.delete("/v1/templates/t?pop=true")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT
    assert response.content == b"{{ x }}"
    assert_missing(api.delete("/v1/templates/t?pop=true"))
    assert api.get("/v1/templates/").json() == []


def test_if_none_match_star_stores_only_when_missing(api: Api) -> None:
    star = {"If-None-Match": "*"}
    assert_empty(api.post("/v1/bucket/k", json=1, headers=star))
    refused = api.post("/v1/bucket/k", json=2, headers=star)
    assert refused.status_code == 412
    assert refused.content == b"1"
    assert refused.headers["ETag"] == api.get("/v1/bucket/k").headers["ETag"]
    assert_json(api.get("/v1/bucket/k"), b"1")


@pytest.mark.parametrize(
    "url", ["/v1/bucket/foo", "/v1/bucket/", "/v1/bucket/?values=true", "/v1/templates/t"]
)
def test_etag_and_304(api: Api, url: str) -> None:
    api.post("/v1/bucket/foo", json={"a": 1})
    api.post("/v1/templates/t", json="{{ foo.a }}")
    first = api.get(url)
    tag = first.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"')
    again = api.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert api.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    api.post("/v1/bucket/foo/a", json=2)
    api.post("/v1/bucket/new", json=0)
    changed = api.get(url, headers={"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != tag


def test_repeated_reads_answer_each_revision_with_its_own_headers(api: Api) -> None:
    api.post("/v1/bucket/doc", json={"a": {"b": 1}})
    first = api.get("/v1/bucket/doc/a/b")
    tag = first.headers["ETag"]
    assert (first.headers["Kvpio-Revision"], first.content) == ("1", b"1")
    assert api.get("/v1/bucket/doc/a/b").headers["Kvpio-Revision"] == "1"
    api.post("/v1/bucket/other", json=0)  # the same text at a new revision
    again = api.get("/v1/bucket/doc/a/b")
    assert (again.headers["Kvpio-Revision"], again.headers["ETag"], again.content) == (
        "2",
        tag,
        b"1",
    )
    unchanged = api.get("/v1/bucket/doc/a/b", headers={"If-None-Match": tag})
    assert unchanged.status_code == 304
    assert (unchanged.headers["Kvpio-Revision"], unchanged.headers["ETag"]) == ("2", tag)
    assert "Content-Type" not in unchanged.headers
    api.post("/v1/bucket/doc/a/b", json=2)
    changed = api.get("/v1/bucket/doc/a/b", headers={"If-None-Match": tag})
    assert (changed.status_code, changed.headers["Kvpio-Revision"], changed.content) == (
        200,
        "3",
        b"2",
    )
    assert changed.headers["ETag"] == values.etag(b"2") != tag
    assert changed.headers["Content-Type"] == JSON
    for _ in range(2):
        missing = api.get("/v1/bucket/doc/a/c")
        assert_missing(missing)
        assert missing.headers["Kvpio-Revision"] == "3"
        assert "ETag" not in missing.headers


def _get_with_repeated_headers(api: Api, path: str, name: str, values: list[str]) -> int:
    """The status of a GET sending header ``name`` once for each of ``values``."""
    parts = urlsplit(api.url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.putrequest("GET", path)
        connection.putheader("Authorization", _basic(api.api_key))
        for value in values:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_read_headers_sent_twice_count_as_one_list(api: Api) -> None:
    api.post("/v1/bucket/doc", json={"a": 1})
    tag = api.get("/v1/bucket/doc/a").headers["ETag"]
    path = "/v1/bucket/doc/a"
    assert _get_with_repeated_headers(api, path, "If-None-Match", ['"other"', tag]) == 304
    assert _get_with_repeated_headers(api, path, "If-None-Match", ['"other"', '"more"']) == 200
    assert _get_with_repeated_headers(api, path, "Last-Event-ID", ["1", "2"]) == 400


def test_every_get_checks_its_last_event_id(api: Api) -> None:
    api.post("/v1/bucket/doc", json={"a": 1})
    assert_error(api.get("/v1/bucket/doc/a", headers={"Last-Event-ID": "x1"}), 400)
    assert_json(api.get("/v1/bucket/doc/a", headers={"Last-Event-ID": "7"}), b"1")


def test_template_etag_is_of_the_rendered_text(api: Api) -> None:
    api.post("/v1/templates/t", json="{{ foo }}")
    api.post("/v1/bucket/foo", json="one")
    tag = api.get("/v1/templates/t").headers["ETag"]
    api.post("/v1/bucket/foo", json="two")
    assert api.get("/v1/templates/t").headers["ETag"] != tag
    assert api.get("/v1/templates/t?raw=1").headers["ETag"] != tag


def test_kvpio_names_lists_referenced_names_percent_encoded(api: Api) -> None:
    api.post("/v1/templates/t", json="{{ b }}{{ a.x }}{{ ünï }}")
    response = api.get("/v1/templates/t")
    assert sorted(response.headers["Kvpio-Names"].split(",")) == ["%C3%BCn%C3%AF", "a", "b"]


def test_kvpio_names_too_long_to_list_is_a_star(api: Api) -> None:
    # 90 names of 300 "é" each: a 54 KB source, whose names would take a 163 KB header.
    api.post("/v1/templates/t", json="".join(f"{{{{ {'é' * 300}{n} }}}}" for n in range(90)))
    response = api.get("/v1/templates/t")
    assert response.status_code == 200
    assert response.headers["Kvpio-Names"] == "*"


@pytest.mark.parametrize(
    "url",
    ["/v1/bucket/foo", "/v1/bucket/", "/v1/templates/t", "/v1/templates/t?raw=1", "/v1/account/"],
)
def test_head_answers_the_get_headers_without_body(api: Api, url: str) -> None:
    api.post("/v1/bucket/foo", json={"a": 1})
    api.post("/v1/templates/t", json="{{ foo.a }}")
    got = api.get(url)
    head = api.request("HEAD", url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert head.headers.get("ETag") == got.headers.get("ETag")


def test_openapi_needs_no_key(kvpio_server: RunningServer) -> None:
    response = requests.get(kvpio_server.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert "/v1/bucket/{path}" in document["paths"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", "/v1/bucket/foo"),
        ("PATCH", "/v1/bucket/foo"),
        ("POST", "/v1/account/"),
        ("DELETE", "/v1/account/"),
        ("POST", "/v1/templates/"),
        ("DELETE", "/v1/templates/"),
    ],
)
def test_other_methods_are_405_with_json(api: Api, method: str, url: str) -> None:
    assert_error(api.request(method, url, data=b"1"), 405)


# Limits


@pytest.fixture(scope="module")
def small_server() -> Iterator[RunningServer]:
    with run_server(max_body=1000, render_timeout=0.5) as server:
        yield server


def test_body_over_the_limit_is_413(small_server: RunningServer) -> None:
    api = Api(small_server.url, small_server.api_key)
    assert_error(api.post("/v1/bucket/big", data=b'"' + b"x" * 1000 + b'"'), 413)
    assert_empty(api.post("/v1/bucket/fits", data=b'"' + b"x" * 998 + b'"'))
    assert_missing(api.get("/v1/bucket/big"))


def test_render_over_the_time_limit_is_422(small_server: RunningServer) -> None:
    api = Api(small_server.url, small_server.api_key)
    loop = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    assert_empty(api.post("/v1/templates/slow", json=loop))
    assert_error(api.get("/v1/templates/slow"), 422)
    api.post("/v1/bucket/foo", json="still fine")
    assert api.get("/v1/bucket/foo").content == b'"still fine"'


def test_chunked_body_over_the_limit_is_413(small_server: RunningServer) -> None:
    api = Api(small_server.url, small_server.api_key)
    chunks = iter([b'"' + b"x" * 600, b"x" * 600 + b'"'])
    assert_error(api.post("/v1/bucket/big", data=chunks), 413)
    assert_empty(api.post("/v1/bucket/small", data=iter([b'"x', b'y"'])))
    assert_json(api.get("/v1/bucket/small"), b'"xy"')


def _nested(levels: int) -> object:
    """A value of ``levels`` nested lists."""
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("body", [lambda v: {"deep": v}, lambda v: [["deep", v]]])
def test_a_value_at_the_nesting_limit_is_accepted_in_a_batch_too(api: Api, body: Any) -> None:
    deepest = _nested(values.MAX_NESTING)
    assert api.post("/v1/bucket/alone", json=deepest).status_code == 200
    assert api.post("/v1/bucket/", json=body(deepest)).status_code == 200
    assert api.get("/v1/bucket/deep").json() == deepest
    too_deep = api.post("/v1/bucket/", json=body(_nested(values.MAX_NESTING + 1)))
    assert too_deep.status_code == 400
    assert "nests deeper than 100" in too_deep.json()["error"]


_BULK = {f"bulk{n}": n for n in range(1500)}


def test_a_bulk_batch_of_top_level_keys_is_stored_whole_in_its_order(api: Api) -> None:
    api.post("/v1/bucket/bulk7", json={"was": "here"})
    assert_empty(api.post("/v1/bucket/", json={**_BULK, "x": {"y": [1]}, "s": "é"}))
    expected = {"bulk7": None, **_BULK, "x": {"y": [1]}, "s": "é"}  # bulk7 keeps its place
    assert api.get("/v1/bucket/?values=true").json() == expected
    assert api.get("/v1/bucket/").json() == list(expected)
    assert_json(api.get("/v1/bucket/x/y/1"), b"1")


@pytest.mark.parametrize(
    "bad", [{"": 1}, {"a/../b": 1}, {"deep": _nested(values.MAX_NESTING + 1)}, {"l/9": 1}]
)
def test_a_bulk_batch_with_one_bad_pair_is_refused_whole(api: Api, bad: dict[str, Any]) -> None:
    api.post("/v1/bucket/l", json=[0])
    assert_error(api.post("/v1/bucket/", json={**_BULK, **bad}), 400)
    assert_json(api.get("/v1/bucket/?values=true"), b'{"l":[0]}')


_LARGE_BULK = {f"bulk{n}": f"value {n}" for n in range(LARGE_BODY // 16)}
_LARGE_TEXT = json.dumps(_LARGE_BULK, ensure_ascii=False)[:-1]
assert len(_LARGE_TEXT) > LARGE_BODY


@pytest.mark.parametrize(
    ("tail", "stored"),
    [
        ("}", {}),
        (
            ', "f": 1.5, "c": {"d": [1, {}]}, "e": "\\u00e9\\n"}',
            {"f": 1.5, "c": {"d": [1, {}]}, "e": "é\n"},
        ),
        (', "bulk1": "again", "x": 1}', {"bulk1": "again", "x": 1}),
        (', "kept": 2}', {"kept": 2}),
        (', "%s": 1}' % ("k" * 700), {"k" * 700: 1}),
    ],
    ids=["plain", "floats, containers, escapes", "a key twice", "a stored key", "a long key"],
)
def test_a_large_bulk_batch_is_stored_whole_as_a_dict_update(
    api: Api, tail: str, stored: dict[str, Any]
) -> None:
    api.post("/v1/bucket/kept", json=1)
    body = (_LARGE_TEXT + tail).encode()
    assert_empty(api.post("/v1/bucket/", data=body))
    expected = {"kept": 1, **_LARGE_BULK}
    expected.update(stored)
    assert api.get("/v1/bucket/?values=true").json() == expected
    assert api.get("/v1/bucket/").json() == list(expected)
    assert int(api.get("/v1/bucket/?count=true").headers["Kvpio-Count"]) == len(expected)


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        (', "": 1}', "empty"),
        (', "..": 1}', ".."),
        (', "%s": 1}' % ("k" * 769), "768"),
        (', "x": 1} trailing', "invalid JSON"),
        (', "x": [1, }', "invalid JSON"),
        (', "x": "\xff"}', "invalid JSON"),
        (', "x": 1e999}', "invalid JSON"),
        (', "x": %s}' % ("[" * 101 + "]" * 101), "nests deeper"),
    ],
    ids=["empty key", "dot-dot key", "long key", "trailing", "cut", "not UTF-8", "inf", "deep"],
)
def test_a_large_bulk_batch_with_one_bad_part_is_refused_whole(
    api: Api, tail: str, error: str
) -> None:
    api.post("/v1/bucket/kept", json=1)
    body = _LARGE_TEXT.encode() + tail.encode("latin-1")
    refused = api.post("/v1/bucket/", data=body)
    assert_error(refused, 400)
    assert error in refused.json()["error"]
    assert_json(api.get("/v1/bucket/?values=true"), b'{"kept":1}')


_TOO_DEEP = f"value nests deeper than {values.MAX_NESTING} levels"
_PADS = {
    "small": "",
    "large": "x" * LARGE_BODY,
    "large, brackets in strings": '[{"\\' * (LARGE_BODY // 4),
}


def _deep_body(kind: str, levels: int, pad: str) -> tuple[str, bytes, Any]:
    """A write of ``kind`` whose body nests ``levels`` deep, padded with string ``pad``.

    Also the value it stores at ``deep``.
    """
    if kind == "value":
        deep: Any = [pad, _nested(levels - 1)]
        return "/v1/bucket/deep", json.dumps(deep).encode(), deep
    if kind == "batch":  # the batch's own object is not counted
        deep = _nested(levels)
        return "/v1/bucket/", json.dumps({"pad": pad, "deep": deep}).encode(), deep
    deep = _nested(levels - 3)  # a commit's body is counted whole: object, list, operation
    operations = [
        {"op": "set", "path": "pad", "value": pad},
        {"op": "set", "path": "deep", "value": deep},
    ]
    return "/v1/bucket/?commit=true", json.dumps({"operations": operations}).encode(), deep


@pytest.mark.parametrize("pad", list(_PADS), ids=list(_PADS))
@pytest.mark.parametrize("kind", ["value", "batch", "commit"])
def test_a_body_at_the_nesting_limit_is_stored_and_one_level_more_is_400(
    api: Api, kind: str, pad: str
) -> None:
    url, body, deep = _deep_body(kind, values.MAX_NESTING, _PADS[pad])
    assert api.post(url, data=body).status_code == 200
    assert api.get("/v1/bucket/deep").json() == deep
    api.delete("/v1/bucket/deep")
    url, body, _ = _deep_body(kind, values.MAX_NESTING + 1, _PADS[pad])
    too_deep = api.post(url, data=body)
    assert_error(too_deep, 400)
    # A batch's values are measured one by one once the batch is read, so without the prefix.
    prefix = "" if kind == "batch" else "invalid JSON: "
    assert too_deep.json()["error"] == prefix + _TOO_DEEP
    assert_missing(api.get("/v1/bucket/deep"))


def test_update_of_a_value_at_the_nesting_limit(kvpio_account: TestAccount) -> None:
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    deepest = _nested(values.MAX_NESTING)
    bucket.update({"a": deepest, "b": 1})
    assert KVBucket(kvpio_account.url, kvpio_account.api_key)["a"] == deepest


@pytest.mark.parametrize(
    "url", ["/v1/account/", "/v1/bucket/", "/v1/bucket/a", "/v1/templates/", "/v1/templates/t"]
)
def test_options_offers_exactly_the_methods_the_url_takes(api: Api, url: str) -> None:
    offered = {m.strip() for m in api.request("OPTIONS", url).headers["Allow"].split(",")}
    for method in ("GET", "HEAD", "POST", "DELETE", "PUT", "PATCH"):
        status = api.request(method, url, data=b'"x"').status_code
        assert (status != 405) == (method in offered), (method, status, offered)
