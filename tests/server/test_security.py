"""Accounts are isolated whatever the path tricks, and keys are stored hashed only."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import unicodedata
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpio_mapping.server.app import AUTH_CACHE_SECONDS
from kvpio_mapping.server.storage import open_storage
from kvpio_mapping.testing import Api, RunningServer, new_account

SECRET = b'"secret of A"'

PATH_TRICKS = [
    "secret",
    "sec%72et",
    "%73%65%63%72%65%74",
    "%2573ecret",
    "%252Fsecret",
    "a/../secret",
    "a/%2E%2E/secret",
    "./secret",
    "%2E/secret",
    "a//secret",
    "/secret",
    "secret/",
    "a%2Fsecret",
    "a%252Fsecret",
    quote(unicodedata.normalize("NFC", "café")),
    quote(unicodedata.normalize("NFD", "café")),
    quote("\u0455ecret"),  # Cyrillic dze
    quote("\uff53\uff45\uff43\uff52\uff45\uff54"),  # fullwidth
    "x" * 768,
    "x" * 769,
    "%00",
    "secret%00",
    "..%2F..%2Faccount",
    "%2E%2E/%2E%2E/account",
    "secret?keys=true",
    "1",
    "%20",
]


@pytest.fixture
def pair(kvpio_server: RunningServer) -> tuple[Api, Api]:
    a, b = new_account(kvpio_server), new_account(kvpio_server)
    return Api(a.url, a.api_key), Api(b.url, b.api_key)


def _assert_empty_bucket(api: Api) -> None:
    assert api.get("/v1/bucket/").json() == []
    assert api.get("/v1/bucket/?values=true").json() == {}
    assert api.get("/v1/bucket/?keys=true").json() == []
    assert api.get("/v1/templates/").json() == []
    assert api.get("/v1/account/").json()["size"] == 2


@pytest.mark.parametrize("trick", PATH_TRICKS)
def test_path_tricks_never_cross_accounts(pair: tuple[Api, Api], trick: str) -> None:
    a, b = pair
    url = "/v1/bucket/" + trick
    written, _, _ = a.raw("POST", url, SECRET)
    a.raw("POST", "/v1/templates/" + trick, b'"template of A"')
    assert written in (200, 400)

    for method in ("GET", "HEAD", "DELETE"):
        status, _, body = b.raw(method, url)
        assert status in (200, 400)
        assert b"secret of A" not in body
    status, _, body = b.raw("GET", "/v1/templates/" + trick + "?raw=1")
    assert b"template of A" not in body
    status, _, body = b.raw("GET", url.partition("?")[0] + "?keys=true")
    assert status == 400 or json.loads(body) == []
    _assert_empty_bucket(b)

    b.raw("POST", url, b'"from B"')
    b.raw("POST", "/v1/templates/" + trick, b'"template of B"')
    everything = a.get("/v1/bucket/?values=true").content
    assert b"from B" not in everything
    if written == 200:
        assert SECRET[1:-1] in everything
    templates = a.get("/v1/templates/").json()
    for name in templates:
        assert a.get("/v1/templates/" + quote(name, safe="") + "?raw=1").text == "template of A"


def test_b_cannot_delete_or_clear_a(pair: tuple[Api, Api]) -> None:
    a, b = pair
    a.post("/v1/bucket/k", json=1)
    b.delete("/v1/bucket/k")
    b.delete("/v1/bucket/?all=true")
    b.delete("/v1/templates/k")
    assert a.get("/v1/bucket/k").content == b"1"


def test_reads_of_one_account_do_not_count_for_another(pair: tuple[Api, Api]) -> None:
    a, b = pair
    a.post("/v1/bucket/k", json=1)
    for _ in range(3):
        a.get("/v1/bucket/k")
    assert b.get("/v1/account/").json()["reads"] == 0
    assert a.get("/v1/account/").json()["reads"] == 3


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Bearer {key}",
        "{key}",
        _basic(""),
        _basic(":"),
        _basic(":{key}"),
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
    ],
)
def test_malformed_or_missing_credentials_are_404(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header.format(key=api.api_key)}
    response = requests.get(api.url + "/v1/bucket/", headers=headers)
    assert response.status_code == 404
    assert response.json() == {"error": "unknown API key"}


@pytest.mark.parametrize("variant", ["{key}x", "x{key}", "{key} ", "{upper}", "{key}\t", "{half}"])
def test_near_miss_keys_are_404(pair: tuple[Api, Api], variant: str) -> None:
    a = pair[0]
    key = a.api_key
    wrong = variant.format(key=key, upper=key.upper(), half=key[: len(key) // 2])
    if wrong == key:
        pytest.skip("the variant equals the key")
    response = requests.get(a.url + "/v1/account/", headers={"Authorization": _basic(wrong + ":")})
    assert response.status_code == 404


def test_password_is_ignored(api: Api) -> None:
    response = requests.get(api.url + "/v1/bucket/", auth=(api.api_key, "anything"))
    assert response.status_code == 200


def test_keys_are_stored_hashed(kvpio_server: RunningServer, api: Api) -> None:
    api.post("/v1/bucket/k", json=1)
    stored = b"".join(
        path.read_bytes()
        for path in Path(kvpio_server.db).parent.iterdir()
        if path.name.startswith(Path(kvpio_server.db).name)
    )
    assert api.api_key.encode() not in stored
    assert kvpio_server.api_key.encode() not in stored


def _accounts(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kvpio_mapping.server", "accounts", *args, "--db", server.db]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_accounts_command_creates_lists_and_deletes(kvpio_server: RunningServer) -> None:
    name = "cli-" + uuid.uuid4().hex
    created = _accounts(kvpio_server, "create", "--id", name, "--email", "cli@example.invalid")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    api = Api(kvpio_server.url, key)
    assert api.get("/v1/account/").json()["id"] == name
    api.post("/v1/bucket/k", json=1)
    listed = _accounts(kvpio_server, "list")
    assert any(
        line.split("\t")[:2] == [name, "cli@example.invalid"] for line in listed.stdout.splitlines()
    )
    assert key not in listed.stdout
    assert _accounts(kvpio_server, "create", "--id", name, "--email", "x").returncode == 1

    api.get("/v1/bucket/k")
    assert _accounts(kvpio_server, "delete", name, "--yes").returncode == 0
    assert api.post("/v1/bucket/k", json=2).status_code == 404
    assert api.post("/v1/templates/t", json="x").status_code == 404
    time.sleep(1.2)
    assert api.get("/v1/account/").status_code == 404
    assert api.get("/v1/bucket/k").status_code == 404
    assert _accounts(kvpio_server, "delete", name, "--yes").returncode == 1


_SEGMENT_BYTES = st.binary(min_size=0, max_size=12).map(
    lambda raw: "".join(f"%{byte:02X}" if byte < 0x30 or byte > 0x7A else chr(byte) for byte in raw)
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "HEAD", "PUT"]),
    endpoint=st.sampled_from(["bucket", "templates", "account"]),
    segments=st.lists(_SEGMENT_BYTES, max_size=4),
    query=st.sampled_from(
        ["", "?raw=1", "?raw=x", "?pop=true", "?keys=true", "?values=true", "?all=true"]
    ),
    body=st.one_of(
        st.none(), st.binary(max_size=40), st.sampled_from([b"{}", b'"{{ x }}"', b"[[]]"])
    ),
)
def test_no_input_gets_a_5xx(
    api: Api, method: str, endpoint: str, segments: list[str], query: str, body: bytes | None
) -> None:
    path = f"/v1/{endpoint}/" + "/".join(segments) + query
    status, headers, answer = api.raw(method, path, body)
    assert status < 500, (path, body, answer)
    if status >= 400 and method != "HEAD":
        assert headers["content-type"] == "application/json"
        assert set(json.loads(answer)) == {"error"}


@pytest.mark.parametrize("header", ["Basic \u00e9", "B\u00e4sic eDo=", "Basic " + "\u00ff" * 8])
def test_non_ascii_authorization_is_an_unknown_key(api: Api, header: str) -> None:
    status, _, body = api.raw("GET", "/v1/bucket/", headers={"Authorization": header})
    assert status == 404
    assert json.loads(body) == {"error": "unknown API key"}


def _delete_account(server: RunningServer, id: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvpio_mapping",
            "accounts",
            "delete",
            id,
            "--db",
            server.db,
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_a_deleted_accounts_key_stops_writing_at_once_though_the_worker_keeps_it(
    kvpio_server: RunningServer,
) -> None:
    """Each write's own transaction finds the account gone; the refusal drops the kept key."""
    account = new_account(kvpio_server)
    auth = (account.api_key, "")
    url = kvpio_server.url + "/v1/bucket/x"
    with requests.Session() as session:  # one connection: one worker, which keeps the key
        assert session.post(url, json=1, auth=auth, timeout=10).status_code == 200
        assert session.get(url, auth=auth, timeout=10).json() == 1
        _delete_account(kvpio_server, account.id)
        for method in ("POST", "PUT", "DELETE"):
            refused = session.request(method, url, json=2, auth=auth, timeout=10)
            assert (refused.status_code, refused.json()) == (404, {"error": "unknown API key"})
        assert session.get(url, auth=auth, timeout=10).status_code == 404


def test_a_deleted_accounts_key_stops_reading_within_the_time_a_worker_keeps_it(
    kvpio_server: RunningServer,
) -> None:
    account = new_account(kvpio_server)
    auth = (account.api_key, "")
    url = kvpio_server.url + "/v1/bucket/x"
    with requests.Session() as session:
        assert session.get(url, auth=auth, timeout=10).status_code == 200
        _delete_account(kvpio_server, account.id)
        deadline = time.monotonic() + 10 * AUTH_CACHE_SECONDS
        for _ in range(1000):
            if session.get(url, auth=auth, timeout=10).status_code == 404:
                break
            assert time.monotonic() < deadline, "the deleted account's key still reads"
            time.sleep(AUTH_CACHE_SECONDS / 10)


def test_a_key_kept_by_the_worker_never_writes_to_an_account_made_again_with_another_key(
    kvpio_server: RunningServer,
) -> None:
    """Deleted and made again under the same id within the second a worker keeps a key: the
    old key's writes of every kind are refused, and the new account holds none of them."""
    account = new_account(kvpio_server)
    old = (account.api_key, "")
    base = kvpio_server.url + "/v1"
    with requests.Session() as session:  # one connection: one worker, which keeps the key
        assert session.post(f"{base}/bucket/x", json=1, auth=old, timeout=10).status_code == 200
        storage = open_storage(kvpio_server.db)
        try:
            storage.delete_account(account.id)
            new_key = storage.create_account(account.id, "next@example.invalid")
        finally:
            storage.close()
        for method, target in (
            ("POST", "/bucket/x"),
            ("POST", "/bucket/?commit=true"),
            ("DELETE", "/bucket/x"),
            ("DELETE", "/bucket/?all=true"),
            ("POST", "/templates/t"),
            ("DELETE", "/templates/t"),
        ):
            body: object = {"operations": [{"op": "set", "path": "x", "value": 2}]}
            if "commit" not in target:
                body = "2"
            if method == "DELETE":
                body = None
            refused = session.request(method, base + target, json=body, auth=old, timeout=10)
            assert refused.status_code == 404, (method, target, refused.text)
    new = requests.get(f"{base}/bucket/", auth=(new_key, ""), timeout=10)
    assert (new.status_code, new.json()) == (200, [])  # its key listing: nothing written
