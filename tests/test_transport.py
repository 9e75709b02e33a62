"""The transport: retries, timeouts, status to exception, configuration from the environment.

Failures a real server cannot easily produce (a 503 then a success, a reset,
a read timeout) are simulated with ``responses``; everything else runs against
the real server of the ``kvpio_server`` fixture or a real closed port.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
import responses
import urllib3.exceptions as u3
from certs import self_signed
from faults import fault_server
from proxy import recording_proxy
from requests.adapters import HTTPAdapter

from kvpio_mapping import (
    AuthenticationError,
    KVBucket,
    KvpioTimeoutError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RequestError,
    ServerError,
    TemplateRenderError,
    TransportError,
    connect,
    protocol,
)
from kvpio_mapping.cli import _maybe_sent, main
from kvpio_mapping.testing import new_account, run_server, start_server
from kvpio_mapping.transport import DEFAULT_URL, IDLE_LIMIT, Transport, authorization

URL = "http://kv.test"
KEY_URL = f"{URL}/v1/bucket/k"


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def bucket():
    return KVBucket(transport=Transport(URL, "key", retries=3, backoff=0))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def calls_to(mock: responses.RequestsMock, method: str) -> int:
    return sum(1 for call in mock.calls if call.request.method == method)


# retries


def test_a_503_then_a_200_succeeds_after_one_retry(mocked, bucket):
    mocked.get(KEY_URL, status=503)
    mocked.get(KEY_URL, json="value")
    assert bucket["k"] == "value"
    assert len(mocked.calls) == 2


def test_a_write_is_retried_after_a_503(mocked, bucket):
    mocked.post(KEY_URL, status=503)
    mocked.post(KEY_URL, body=b"")
    bucket["k"] = 1
    assert len(mocked.calls) == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_error_forever_raises_server_error_after_bounded_retries(mocked, status):
    bucket = KVBucket(transport=Transport(URL, "key", retries=3, backoff=0))
    mocked.get(KEY_URL, status=status, json={"error": "unavailable"})
    with pytest.raises(ServerError) as raised:
        bucket["k"]
    assert raised.value.status == status
    assert isinstance(raised.value, ConnectionError)
    assert not isinstance(raised.value, KeyError)
    assert len(mocked.calls) == 4


def test_retries_back_off_exponentially(mocked, monkeypatch):
    pauses = []
    monkeypatch.setattr("kvpio_mapping.transport.time.sleep", pauses.append)
    bucket = KVBucket(transport=Transport(URL, "key", retries=3, backoff=0.1))
    mocked.get(KEY_URL, status=503)
    with pytest.raises(ServerError):
        bucket["k"]
    assert pauses == pytest.approx([0.1, 0.2, 0.4])


def test_a_503_forever_is_never_a_missing_key(mocked, bucket):
    mocked.get(KEY_URL, status=503)
    with pytest.raises(ServerError):
        bucket.get("k", "default")
    with pytest.raises(ServerError):
        "k" in bucket  # noqa: B015


def test_a_500_raises_server_error_without_retrying(mocked, bucket):
    mocked.get(KEY_URL, status=500, json={"error": "internal server error"})
    with pytest.raises(ServerError) as raised:
        bucket["k"]
    assert raised.value.status == 500
    assert "internal server error" in str(raised.value)
    assert len(mocked.calls) == 1


def test_a_read_timeout_raises_kvpio_timeout_error_after_retries(mocked, bucket):
    mocked.get(KEY_URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(KvpioTimeoutError) as raised:
        bucket["k"]
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, ConnectionError)
    assert not isinstance(raised.value, KeyError)
    assert len(mocked.calls) == 4


def test_a_read_timeout_then_an_answer_succeeds(mocked, bucket):
    mocked.get(KEY_URL, body=requests.ReadTimeout("read timed out"))
    mocked.get(KEY_URL, json=[1])
    assert bucket["k"] == [1]


def test_a_connection_reset_on_a_get_is_retried(mocked, bucket):
    mocked.get(KEY_URL, body=requests.ConnectionError("connection reset by peer"))
    mocked.get(KEY_URL, json={"a": 1})
    assert bucket["k"] == {"a": 1}
    assert len(mocked.calls) == 2


def test_a_connection_reset_forever_raises_transport_error(mocked, bucket):
    mocked.get(KEY_URL, body=requests.ConnectionError("connection reset by peer"))
    with pytest.raises(TransportError) as raised:
        bucket.get("k")
    assert not isinstance(raised.value, KeyError)
    assert len(mocked.calls) == 4


def test_a_failure_names_an_attempt_that_may_have_reached_the_server_if_one_did(mocked, bucket):
    """A write answered by a reset and retried into a server gone: the last attempt never
    connected, but the first may have been done; the error's cause says so (the CLI's
    report of an import that failed rests on it)."""
    reset = requests.ConnectionError("connection reset by peer")
    refused = requests.ConnectionError(
        u3.MaxRetryError(None, "/", u3.NewConnectionError(None, "connection refused"))
    )
    mocked.post(URL + "/v1/bucket/", body=reset)
    mocked.post(URL + "/v1/bucket/", body=refused)
    with pytest.raises(TransportError) as raised:
        bucket.update({"a": 1})
    assert raised.value.__cause__ is reset
    assert _maybe_sent(raised.value)
    mocked.replace(responses.POST, URL + "/v1/bucket/", body=refused)
    with pytest.raises(TransportError) as raised:
        bucket.update({"a": 1})
    assert not _maybe_sent(raised.value)  # no attempt got through


def test_a_pop_is_not_retried_after_a_503(mocked, bucket):
    mocked.delete(KEY_URL, status=503)
    mocked.delete(KEY_URL, json="value")
    with pytest.raises(ServerError):
        bucket.pop("k")
    assert calls_to(mocked, "DELETE") == 1
    assert mocked.calls[0].request.url == KEY_URL + "?pop=true"


def test_a_delete_is_not_retried_after_a_reset(mocked, bucket):
    mocked.delete(KEY_URL, body=requests.ConnectionError("connection reset by peer"))
    mocked.delete(KEY_URL, json="value")
    with pytest.raises(TransportError):
        del bucket["k"]
    assert calls_to(mocked, "DELETE") == 1


def test_a_pop_is_not_retried_after_a_read_timeout(mocked, bucket):
    mocked.delete(KEY_URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(KvpioTimeoutError):
        bucket.pop("k", None)
    assert calls_to(mocked, "DELETE") == 1


def test_a_failed_pop_is_never_a_key_error(mocked, bucket):
    mocked.delete(KEY_URL, status=503)
    with pytest.raises(ServerError):
        bucket.pop("k", "default")


# status to exception


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RequestError),
        (405, RequestError),
        (412, PreconditionFailedError),
        (413, PayloadTooLargeError),
        (422, TemplateRenderError),
    ],
)
def test_a_4xx_answer_raises_the_matching_error_with_the_servers_message(
    mocked, bucket, status, error
):
    mocked.post(KEY_URL, status=status, json={"error": "what is wrong"})
    with pytest.raises(error) as raised:
        bucket["k"] = 1
    assert "what is wrong" in str(raised.value)
    assert not isinstance(raised.value, KeyError)
    assert len(mocked.calls) == 1


def test_request_errors_are_value_errors_and_carry_the_status(mocked, bucket):
    mocked.post(KEY_URL, status=400, json={"error": "bad"})
    with pytest.raises(ValueError) as raised:
        bucket["k"] = 1
    assert raised.value.status == 400


def test_an_error_without_a_json_body_keeps_its_text(mocked, bucket):
    mocked.post(KEY_URL, status=400, body="plain failure", content_type="text/plain")
    with pytest.raises(RequestError, match="plain failure"):
        bucket["k"] = 1


def test_a_missing_value_is_an_empty_200(mocked, bucket):
    mocked.get(KEY_URL, body=b"", headers={"Kvpio-Missing": "true"})
    with pytest.raises(KeyError):
        bucket["k"]


def test_requests_carry_basic_auth_with_the_key_as_user(mocked, bucket):
    mocked.get(KEY_URL, json=1)
    bucket["k"]
    assert mocked.calls[0].request.headers["Authorization"] == "Basic a2V5Og=="


def test_keys_are_percent_encoded_per_segment(mocked, bucket):
    mocked.get(f"{URL}/v1/bucket/a%20b/%3F%23/%252F", json=1)
    assert bucket["a b/?#/%2F"] == 1


# a real slow server, a real closed port, the real server


def test_a_server_that_never_answers_raises_kvpio_timeout_error():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        bucket = KVBucket(transport=Transport(url, "key", timeout=0.2, retries=0))
        started = time.monotonic()
        with pytest.raises(KvpioTimeoutError):
            bucket["k"]
        assert time.monotonic() - started < 2


def test_the_buckets_timeout_argument_bounds_the_wait():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        bucket = KVBucket(url, "key", timeout=0.2)
        started = time.monotonic()
        with pytest.raises(KvpioTimeoutError):
            bucket.pop("k", None)
        assert time.monotonic() - started < 1.5


def test_a_refused_connection_raises_transport_error_within_the_timeout():
    bucket = KVBucket(f"http://127.0.0.1:{closed_port()}", "key", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot reach") as raised:
        bucket["k"]
    assert isinstance(raised.value, ConnectionError)
    assert time.monotonic() - started < 1


def test_a_wrong_key_raises_authentication_error(kvpio_server):
    with pytest.raises(AuthenticationError):
        connect(kvpio_server.url, "wrong-key").account()
    with pytest.raises(PermissionError):
        KVBucket(kvpio_server.url, "wrong-key")["k"]


def test_the_right_key_reads_the_account(kvpio_account):
    account = connect(kvpio_account.url, kvpio_account.api_key).account()
    assert account["id"] == kvpio_account.id
    assert kvpio_account.api_key not in str(account)


@pytest.mark.slow
def test_a_body_over_the_servers_limit_raises_payload_too_large_error():
    with run_server(max_body=1024) as server:
        account = new_account(server)
        bucket = KVBucket(account.url, account.api_key)
        bucket["k"] = "small"
        assert bucket["k"] == "small"
        with pytest.raises(PayloadTooLargeError) as raised:
            bucket["k"] = "x" * 2048
        assert isinstance(raised.value, ValueError)
        with pytest.raises(PayloadTooLargeError):
            bucket.update({"k": "x" * 2048, "other": 1})
        assert bucket["k"] == "small"
        assert "other" not in bucket


def test_a_closed_bucket_reopens_its_connections_when_used_again(kvpio_account):
    with KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0) as bucket:
        bucket["k"] = 1
    assert bucket["k"] == 1
    bucket.close()
    bucket["k"] = 2
    assert bucket["k"] == 2


def test_a_closed_connection_reopens_when_used_again(kvpio_account):
    with connect(kvpio_account.url, kvpio_account.api_key, ttl=0) as conn:
        conn.bucket["k"] = "v"
        conn.templates["t"] = "{{ k }}"
    assert conn.templates["t"] == "v"
    assert conn.account()["id"] == kvpio_account.id


# configuration from the environment

ENVIRONMENT = ("KVPIO_URL", "KVPIO_APIKEY", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
               "NO_PROXY", "no_proxy")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_url_and_key_come_from_kvpio_url_and_kvpio_apikey(clean_env, monkeypatch, kvpio_account):
    monkeypatch.setenv("KVPIO_URL", kvpio_account.url + "/")
    monkeypatch.setenv("KVPIO_APIKEY", kvpio_account.api_key)
    bucket = KVBucket()
    assert bucket.url == kvpio_account.url
    bucket["k"] = "from env"
    assert KVBucket(kvpio_account.url, kvpio_account.api_key)["k"] == "from env"


def test_the_key_comes_from_the_first_line_of_the_kvpio_file(clean_env, kvpio_account):
    (clean_env / ".kvpio").write_text(f"  {kvpio_account.api_key}  \nsecond line\n")
    bucket = KVBucket(kvpio_account.url)
    assert bucket._transport.api_key == kvpio_account.api_key
    bucket["k"] = 1
    assert bucket["k"] == 1


def test_the_environment_key_wins_over_the_kvpio_file(clean_env, monkeypatch):
    (clean_env / ".kvpio").write_text("from-file\n")
    monkeypatch.setenv("KVPIO_APIKEY", "from-env")
    assert Transport(URL).api_key == "from-env"


def test_arguments_win_over_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("KVPIO_URL", "http://env.test")
    monkeypatch.setenv("KVPIO_APIKEY", "from-env")
    transport = Transport("http://arg.test/", "from-arg")
    assert (transport.url, transport.api_key) == ("http://arg.test", "from-arg")


def test_the_url_defaults_to_the_local_server(clean_env):
    assert Transport(api_key="key").url == DEFAULT_URL


@pytest.mark.parametrize("content", [None, "", "\nkey on second line\n", "   \n"])
def test_no_key_anywhere_raises_authentication_error_at_construction(clean_env, content):
    if content is not None:
        (clean_env / ".kvpio").write_text(content)
    with pytest.raises(AuthenticationError):
        KVBucket(URL)
    with pytest.raises(AuthenticationError):
        connect(URL)


def test_an_http_proxy_from_the_environment_is_used(clean_env, monkeypatch, kvpio_account):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, timeout=0.5)
    with pytest.raises(TransportError) as raised:
        bucket["k"]
    assert isinstance(raised.value.__cause__, requests.exceptions.ProxyError)


def test_no_proxy_bypasses_the_proxy(clean_env, monkeypatch, kvpio_account):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    bucket["k"] = 1
    assert bucket["k"] == 1


# the session's settings: every call honours them, on the pooled path or the full one


def _through(session: requests.Session, account) -> KVBucket:
    return KVBucket(transport=Transport(account.url, account.api_key, session=session), ttl=0)


def test_a_proxy_of_the_session_carries_every_call(clean_env, kvpio_account):
    with recording_proxy() as proxy:
        session = requests.Session()
        session.proxies = {"http": proxy.url}
        bucket = _through(session, kvpio_account)
        bucket["k"] = 1
        assert bucket["k"] == 1
        key_url = f"{kvpio_account.url}/v1/bucket/k"
        assert proxy.calls == [("POST", key_url), ("GET", key_url)]


def test_a_proxy_from_the_environment_carries_every_call(clean_env, monkeypatch, kvpio_account):
    with recording_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
        bucket["k"] = 1
        assert bucket["k"] == 1
        assert len(proxy.calls) == 2
        _, _, headers = proxy.requests[1]
        assert headers["Authorization"] == authorization(kvpio_account.api_key)


def test_a_proxy_set_on_the_session_after_some_calls_carries_the_next_ones(
    clean_env, kvpio_account
):
    with recording_proxy() as proxy:
        session = requests.Session()
        bucket = _through(session, kvpio_account)
        bucket["k"] = 1
        session.proxies["http"] = proxy.url
        assert bucket["k"] == 1
        assert proxy.calls == [("GET", f"{kvpio_account.url}/v1/bucket/k")]
        session.proxies.clear()
        assert bucket["k"] == 1
        assert len(proxy.calls) == 1


def test_headers_set_on_the_session_go_out_with_the_next_calls(clean_env, kvpio_account):
    with recording_proxy() as proxy:
        session = requests.Session()
        session.proxies = {"http": proxy.url}
        bucket = _through(session, kvpio_account)
        bucket["k"] = 1
        session.headers["X-Trace"] = "abc"
        assert bucket["k"] == 1
        assert "X-Trace" not in proxy.requests[0][2]
        assert proxy.requests[1][2]["X-Trace"] == "abc"


def test_cookies_an_answer_sets_go_out_with_the_next_calls(clean_env, kvpio_account):
    with recording_proxy() as proxy:
        proxy.added["Set-Cookie"] = "route=b2; Path=/"
        session = requests.Session()
        session.proxies = {"http": proxy.url}
        bucket = _through(session, kvpio_account)
        bucket["k"] = 1
        assert session.cookies.get("route") == "b2"
        assert bucket["k"] == 1
        assert "Cookie" not in proxy.requests[0][2]
        assert proxy.requests[1][2]["Cookie"] == "route=b2"


def test_an_answer_carries_the_cookies_it_set_as_a_requests_response_does(clean_env, kvpio_account):
    with recording_proxy() as proxy:
        session = requests.Session()
        session.proxies = {"http": proxy.url}
        transport = Transport(kvpio_account.url, kvpio_account.api_key, session=session)
        plain = transport.send(protocol.Request("GET", "bucket/"))
        assert plain.status_code == 200 and len(plain.cookies) == 0
        proxy.added["Set-Cookie"] = "route=b2; Path=/"
        setting = transport.send(protocol.Request("GET", "bucket/"))
        assert setting.cookies.get("route") == "b2"
        assert pickle.loads(pickle.dumps(setting)).cookies.get("route") == "b2"


class _Gateway(requests.auth.AuthBase):
    """An auth of the session's that adds a header of its own, as a gateway might need."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.calls += 1
        request.headers["X-Gateway"] = "token"
        return request


def test_the_sessions_auth_and_response_hooks_apply_to_every_call(clean_env, kvpio_account):
    with recording_proxy() as proxy:
        session = requests.Session()
        session.proxies = {"http": proxy.url}
        session.auth = gateway = _Gateway()
        answered: list[int] = []
        session.hooks["response"].append(lambda answer, **_: answered.append(answer.status_code))
        bucket = _through(session, kvpio_account)
        bucket["k"] = 1
        assert bucket["k"] == 1
        assert gateway.calls == 2
        assert answered == [200, 200]
        assert [headers["X-Gateway"] for _, _, headers in proxy.requests] == ["token"] * 2
        assert all(
            headers["Authorization"] == authorization(kvpio_account.api_key)
            for _, _, headers in proxy.requests
        )


def test_a_mounted_adapters_pool_carries_every_call(kvpio_account):
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=2)
    session.mount(kvpio_account.url, adapter)
    transport = Transport(kvpio_account.url, kvpio_account.api_key, session=session)
    bucket = KVBucket(transport=transport, ttl=0)
    for n in range(5):
        bucket["k"] = n
        assert bucket["k"] == n
    pools = adapter.poolmanager.pools
    # urllib3's pool container refuses iteration; keys() is its way
    assert sum(pools[key].num_requests for key in pools.keys()) == 10  # noqa: SIM118


class _Recording(HTTPAdapter):
    """An adapter with a ``send`` of its own: the calls must go through it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        self.sent.append(f"{request.method} {request.url}")
        return super().send(request, **kwargs)


def test_an_adapter_mounted_after_some_calls_with_a_send_of_its_own_gets_the_next_ones(
    kvpio_account,
):
    session = requests.Session()
    bucket = _through(session, kvpio_account)
    bucket["k"] = 1
    recording = _Recording()
    session.mount("http://", recording)
    assert bucket["k"] == 1
    assert recording.sent == [f"GET {kvpio_account.url}/v1/bucket/k"]


def test_a_session_closed_by_its_owner_opens_its_pool_again(kvpio_account):
    session = requests.Session()
    bucket = _through(session, kvpio_account)
    bucket["k"] = 1
    session.close()
    assert bucket["k"] == 1


@pytest.mark.slow
def test_tls_verifies_against_the_certificate_the_session_or_environment_names(
    tmp_path, monkeypatch
):
    cert, key = self_signed(tmp_path)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # as in requests, they win
        monkeypatch.delenv(name, raising=False)
    options = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with run_server(db=tmp_path / "kv.sqlite3", options=options) as server:
        session = requests.Session()
        bucket = KVBucket(
            transport=Transport(server.url, server.api_key, session=session, retries=0), ttl=0
        )
        with pytest.raises(TransportError) as raised:
            bucket["k"] = 1
        assert isinstance(raised.value.__cause__, requests.exceptions.SSLError)
        session.verify = str(cert)
        bucket["k"] = 1
        assert bucket["k"] == 1
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert KVBucket(server.url, server.api_key, ttl=0)["k"] == 1


# idle keep-alive connections (a request racing the server's close is lost)


@pytest.mark.slow
def test_a_pop_after_an_idle_pause_never_goes_out_on_a_connection_the_server_may_close():
    with fault_server() as fault:
        fault.reset_idle_after = IDLE_LIMIT + 0.2
        bucket = KVBucket(transport=Transport(fault.url, "key"), ttl=0)
        assert bucket["warm"] == "value"  # leaves a pooled keep-alive connection
        time.sleep(IDLE_LIMIT + 0.4)
        assert bucket.pop("k") == "value"
        assert fault.resets == 0
        assert fault.requests == [("GET", "/v1/bucket/warm"), ("DELETE", "/v1/bucket/k?pop=true")]


def test_a_connection_idle_under_the_limit_is_reused(kvpio_account):
    transport = Transport(kvpio_account.url, kvpio_account.api_key)
    bucket = KVBucket(transport=transport, ttl=0)
    bucket["a"] = 1
    pool = transport.session.get_adapter(transport.base).poolmanager.connection_from_url(
        transport.base
    )
    opened = pool.num_connections
    for _ in range(5):
        bucket.pop("a", None)
    assert pool.num_connections == opened


# the timeout is a deadline for the whole call


def test_a_hung_server_is_given_up_on_at_the_timeout_retries_included():
    with fault_server() as fault:
        fault.hang = True
        bucket = KVBucket(fault.url, "key", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(KvpioTimeoutError, match="within the timeout of 1 s"):
            bucket["k"]
        assert time.monotonic() - started < 1.5
        assert len(fault.requests) == 1


@pytest.mark.parametrize("connection", ["open", "new"])
@pytest.mark.parametrize("part", ["head", "body"])
def test_a_server_dripping_its_answer_is_given_up_on_at_the_timeout(part, connection):
    with fault_server() as fault:
        bucket = KVBucket(fault.url, "key", timeout=0.5, ttl=0)
        if connection == "open":
            assert bucket["warm"] == "value"  # the next request goes on this open connection
        fault.drip(part)
        started = time.monotonic()
        with pytest.raises(KvpioTimeoutError, match=r"within the timeout of 0\.5 s"):
            bucket["k"]
        assert time.monotonic() - started < 2.0  # the drip takes over 4 s
        assert len(fault.requests) == (2 if connection == "open" else 1)


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_cli_timeout_bounds_a_command(capsys, where):
    with fault_server() as fault:
        fault.hang = True
        started = time.monotonic()
        argv = ["--url", fault.url, "--api-key", "k", "bucket", "get", "k"]
        argv = [*argv, "--timeout", "0.5"] if where == "after" else ["--timeout", "0.5", *argv]
        code = main(argv)
        assert time.monotonic() - started < 1.0
    assert code == 4
    assert "did not answer in time" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_the_cli_refuses_a_timeout_that_is_not_a_positive_number(capsys, text):
    assert main(["--timeout", text, "account"]) == 2
    assert "--timeout" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_a_timeout_that_is_not_a_positive_number_is_refused(timeout):
    with pytest.raises(ValueError, match="timeout"):
        Transport(URL, "key", timeout=timeout)
    with pytest.raises(TypeError, match="timeout"):
        Transport(URL, "key", timeout=(3.05, 30))  # type: ignore[arg-type]


@pytest.mark.slow
def test_calls_ride_out_a_server_restart_on_the_same_port(tmp_path):
    db = tmp_path / "kv.sqlite3"
    server = start_server(db)
    port = urlsplit(server.url).port
    bucket = KVBucket(server.url, server.api_key, ttl=0)
    bucket["k"] = 1
    server.stop()
    stopped = time.monotonic()
    restarted = []

    def restart():
        time.sleep(1.0)
        restarted.append(start_server(db, api_key=server.api_key, port=port))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        assert bucket["k"] == 1
        down = time.monotonic() - stopped
        bucket["k"] = 2
        assert bucket.pop("k") == 2
    finally:
        thread.join(30)
        for running in [server, *restarted]:
            running.stop()
            running.cleanup()
    assert down >= 1.0


def test_a_mock_of_requests_active_before_the_package_is_imported_still_answers():
    # The pooled path checks that requests' own methods are in place whenever it runs,
    # so a mock that was already active when the package was imported is honoured too.
    script = (
        "import responses\n"
        "with responses.RequestsMock() as mocked:\n"
        "    from kvpio_mapping import KVBucket\n"
        "    mocked.add(responses.GET, 'http://kv.invalid/v1/bucket/a', json=1)\n"
        "    assert KVBucket('http://kv.invalid', 'k')['a'] == 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
