"""Reading answers: only the protocol's missing answer is missing, only its unknown-key 404
is a wrong key, and anything else a client cannot use is a ``ProtocolError`` naming the URL.

A real kvpio server never sends these answers, so a fault server of the tests' own does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from faults import Fault, fault_server

import kvpio_mapping.compat as compat
from kvpio_mapping import (
    AuthenticationError,
    KVBucket,
    ProtocolError,
    TemplateStore,
    TransportError,
    connect,
)
from kvpio_mapping.cli import main
from kvpio_mapping.transport import Transport


@pytest.fixture
def fault() -> Iterator[Fault]:
    with fault_server() as running:
        yield running


@pytest.fixture
def bucket(fault: Fault) -> KVBucket:
    return KVBucket(transport=Transport(fault.url, "key", retries=0, timeout=5))


UNUSABLE = {
    "200 empty without Kvpio-Missing": (200, b"", {}),
    "204": (204, b"", {}),
    "unrequested 304": (304, b"", {}),
    "garbage 200": (200, b"{not json", {}),
    "HTML 200": (200, b"<html><body>Welcome</body></html>", {"Content_Type": "text/html"}),
    "301": (301, b"", {"Location": "https://elsewhere.test/"}),
    "302": (302, b"", {"Location": "/login"}),
    "307": (307, b"", {"Location": "/v2/bucket/k"}),
    "404 of another server": (404, b"<h1>Not Found</h1>", {"Content_Type": "text/html"}),
}


@pytest.mark.parametrize("answer", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_answer_to_a_read_is_a_protocol_error_naming_the_url(
    fault: Fault, bucket: KVBucket, answer: tuple[int, bytes, dict[str, str]]
) -> None:
    status, body, headers = answer
    fault.answer(status, body, **headers)
    with pytest.raises(ProtocolError) as raised:
        bucket["k"]
    error = raised.value
    assert isinstance(error, TransportError)
    assert not isinstance(error, KeyError | ValueError | AttributeError)
    assert f"{fault.url}/v1/bucket/k" in str(error)


@pytest.mark.parametrize("answer", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_answer_leaves_the_cache_as_it_was(
    fault: Fault, bucket: KVBucket, answer: tuple[int, bytes, dict[str, str]]
) -> None:
    status, body, headers = answer
    fault.answer(status, body, **headers)
    for read in (lambda: bucket["k"], lambda: "k" in bucket, lambda: bucket.get("k")):
        with pytest.raises(ProtocolError):
            read()
    fault.answer(200, b'"there"', Content_Type="application/json")
    assert bucket["k"] == "there"
    assert bucket.cache_info().currsize == 1


def test_a_redirect_is_not_followed_and_names_where_it_pointed(fault: Fault, bucket: KVBucket):
    fault.answer(302, b"", Location="https://elsewhere.test/login")
    with pytest.raises(ProtocolError, match=r"302 \(to https://elsewhere.test/login\)"):
        bucket["k"] = 1
    assert len(fault.requests) == 1


def test_a_body_that_is_not_json_says_so(fault: Fault, bucket: KVBucket) -> None:
    fault.answer(200, b'{"truncated": [1, 2', Content_Type="application/json")
    with pytest.raises(ProtocolError, match="not JSON"):
        bucket["k"]
    with pytest.raises(ProtocolError, match="not JSON"):
        bucket.copy()


def test_an_answer_cut_short_is_a_transport_error(fault: Fault, bucket: KVBucket) -> None:
    fault.answer(200, b'{"a": 1', Content_Type="application/json")
    fault.short_by = 10
    with pytest.raises(TransportError) as raised:
        bucket["k"]
    assert not isinstance(raised.value, KeyError | ValueError)


def test_the_missing_answer_is_missing(fault: Fault, bucket: KVBucket) -> None:
    fault.answer(200, b"", Kvpio_Missing="true", Content_Type="application/json")
    assert "k" not in bucket
    with pytest.raises(KeyError):
        bucket["k"]


def test_a_missing_answer_with_a_body_is_a_protocol_error_never_a_key_error(fault: Fault):
    fault.answer(200, b'"text"', Kvpio_Missing="true", Content_Type="text/plain; charset=utf-8")
    templates = TemplateStore(Transport(fault.url, "key", retries=0))
    for read in (lambda: templates["page"], lambda: templates.source("page")):
        with pytest.raises(ProtocolError, match="Kvpio-Missing with a body"):
            read()


def test_a_value_without_its_etag_is_a_protocol_error_to_a_versioned_read(
    fault: Fault, bucket: KVBucket
) -> None:
    fault.answer(200, b'{"a": 1}', Content_Type="application/json")
    with pytest.raises(ProtocolError, match="without its ETag"):
        bucket.versioned("k")
    with pytest.raises(ProtocolError, match="without its ETag"):
        bucket.transact(lambda tx: tx.get("k"))


WRITES = {
    "set": lambda bucket, templates: bucket.__setitem__("k", 1),
    "update": lambda bucket, templates: bucket.update({"k": 1, "j": 2}),
    "clear": lambda bucket, templates: bucket.clear(),
    "merge": lambda bucket, templates: bucket.merge("k", {"a": 1}),
    "set_if": lambda bucket, templates: bucket.set_if("k", 1, None),
    "template": lambda bucket, templates: templates.__setitem__("page", "x"),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_a_write_answered_with_a_page_is_a_protocol_error_never_done(
    fault: Fault, bucket: KVBucket, write: Any
) -> None:
    fault.answer(200, b"<html>Sign in to the network</html>", Content_Type="text/html")
    with pytest.raises(ProtocolError, match="answered a write with a body"):
        write(bucket, TemplateStore(bucket._transport))


def test_the_cli_reports_a_write_answered_with_a_page(
    fault: Fault, capsys: pytest.CaptureFixture[str]
) -> None:
    fault.answer(200, b"<html>Sign in to the network</html>", Content_Type="text/html")
    assert main(["--url", fault.url, "--api-key", "k", "bucket", "set", "k", "1"]) != 0
    assert "answered a write with a body" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b'{"a": 1}', b'"text"', b"[1, {}]"], ids=["ints", "object", "str", "mixed"]
)
def test_a_key_list_that_is_not_a_list_of_text_is_a_protocol_error(
    fault: Fault, bucket: KVBucket, body: bytes
) -> None:
    fault.answer(200, body, Content_Type="application/json")
    with pytest.raises(ProtocolError):
        len(bucket)


def test_a_snapshot_that_is_not_an_object_is_a_protocol_error(fault: Fault, bucket: KVBucket):
    fault.answer(200, b"[1, 2]", Content_Type="application/json")
    with pytest.raises(ProtocolError, match="list where a dict belongs"):
        bucket.copy()


# 404: the unknown key, and everything else


def test_only_the_protocols_unknown_key_answer_is_an_authentication_error(
    fault: Fault, bucket: KVBucket
) -> None:
    fault.answer(404, b'{"error": "unknown API key"}', Content_Type="application/json")
    with pytest.raises(AuthenticationError):
        bucket["k"]
    fault.answer(404, b'{"error": "404 Not Found"}', Content_Type="application/json")
    with pytest.raises(ProtocolError, match="does not look like a kvpio v1 server"):
        bucket["k"]


def test_templates_and_the_account_read_answers_the_same_way(fault: Fault) -> None:
    transport = Transport(fault.url, "key", retries=0)
    fault.answer(404, b"<h1>Not Found</h1>", Content_Type="text/html")
    with pytest.raises(ProtocolError, match="does not look like a kvpio v1 server"):
        TemplateStore(transport)["page"]
    with pytest.raises(ProtocolError, match="does not look like a kvpio v1 server"):
        connect(fault.url, "key").account()
    fault.answer(200, b"[1]", Content_Type="application/json")
    with pytest.raises(ProtocolError):
        connect(fault.url, "key").account()
    fault.answer(200, b"\xff\xfe", Content_Type="text/plain")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        TemplateStore(transport).source("page")


def test_a_real_servers_wrong_key_is_still_an_authentication_error(kvpio_server: Any) -> None:
    with pytest.raises(AuthenticationError):
        KVBucket(kvpio_server.url, "wrong-key")["k"]


def test_the_cli_says_a_url_is_not_a_kvpio_server(
    fault: Fault, capsys: pytest.CaptureFixture[str]
) -> None:
    fault.answer(404, b"<h1>Not Found</h1>", Content_Type="text/html")
    code = main(["--url", fault.url, "--api-key", "k", "bucket", "list"])
    err = capsys.readouterr().err
    assert code == 4
    assert "does not look like a kvpio v1 server" in err
    assert "API key" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bucket", "get", "k"], "without Kvpio-Missing"),
        (["bucket", "export"], "not JSON"),
        (["account"], "not JSON"),
    ],
)
def test_the_cli_reports_unusable_answers_and_never_a_missing_key(
    fault: Fault, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    fault.answer(200, b"" if argv[1:2] == ["get"] else b"<html>", Content_Type="text/html")
    code = main(["--url", fault.url, "--api-key", "k", *argv])
    err = capsys.readouterr().err
    assert code == 4
    assert expected in err
    assert "no such key" not in err


# a request that may have been applied and is not idempotent is sent once


def test_the_cli_deletes_a_list_item_once_when_the_answer_is_lost(
    fault: Fault, capsys: pytest.CaptureFixture[str]
) -> None:
    fault.drop = True
    code = main(["--url", fault.url, "--api-key", "k", "bucket", "del", "l/1"])
    assert code == 4
    assert fault.requests == [("DELETE", "/v1/bucket/l/1")]


def test_compat_deletes_a_list_item_once_when_the_answer_is_lost(fault: Fault) -> None:
    saved = compat.api_base, compat.api_key
    compat.api_base, compat.api_key = fault.url, "k"
    fault.drop = True
    try:
        with pytest.raises(compat.ConnectionError):
            compat.Bucket().delete("l/1")
    finally:
        compat.api_base, compat.api_key = saved
    assert fault.requests == [("DELETE", "/v1/bucket/l/1")]


def test_a_delete_by_name_may_be_resent(fault: Fault) -> None:
    fault.drop = True
    transport = Transport(fault.url, "k", retries=2, backoff=0)
    with pytest.raises(TransportError):
        transport.request("DELETE", "bucket/name")
    assert fault.requests == [("DELETE", "/v1/bucket/name")] * 3


@pytest.mark.parametrize(
    ("body", "count"), [(b'"3"', "3"), (b"3", "4"), (b"-1", "-1"), (b"true", "1")]
)
def test_a_count_that_is_not_a_whole_number_as_its_header_says_is_a_protocol_error(
    fault: Fault, bucket: KVBucket, body: bytes, count: str
) -> None:
    fault.answer(200, body, Content_Type="application/json", Kvpio_Count=count)
    with pytest.raises(ProtocolError):
        len(bucket)
    with pytest.raises(ProtocolError):
        len(bucket.view("o"))
