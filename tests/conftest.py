"""Shared helpers: an authenticated session against a test account (fixtures come from
the ``kvpio_mapping.testing`` plugin)."""

from __future__ import annotations

import http.client
from base64 import b64encode
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from kvpio_mapping.testing import TestAccount


class Api:
    """Requests to one account; ``raw`` sends the path bytes exactly as given."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key
        self.session = requests.Session()
        self.session.auth = (api_key, "")

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        api_key: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with ``path`` sent byte for byte (no client normalisation)."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        key = self.api_key if api_key is None else api_key
        sent = {"Authorization": "Basic " + b64encode(f"{key}:".encode()).decode()}
        sent.update(headers or {})
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in sent.items():
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            answer = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()


@pytest.fixture
def api(kvpio_account: TestAccount) -> Api:
    """An authenticated session on a fresh, empty account."""
    return Api(kvpio_account.url, kvpio_account.api_key)
