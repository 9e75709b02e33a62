"""The 2016 ``kvpio`` module API (kvpio-python 0.2.0), on this package's transport.

Code written for kvp.io runs unchanged after ``import kvpio_mapping.compat as
kvpio``: the same module settings (``api_key``, ``api_ver``, ``api_base``,
``load_json``), the same classes and methods, the same ``(status, text)``
answers, the same requests on the wire (the key is appended to the URL as
given and quoted the way ``requests`` quotes it). Status codes are returned,
never raised; a server that cannot be reached raises, as ``requests`` did.

The difference is underneath: instead of a new connection per call, calls
share one keep-alive :class:`~kvpio_mapping.transport.Transport` per
``(api_base, api_ver, api_key)``.

Example (from the original README)::

    import kvpio_mapping.compat as kvpio
    kvpio.api_base = 'http://127.0.0.1:8000'
    kvpio.api_key = '123abc'
    account = kvpio.Account().get()
    # (200, '{"id":"default","email":"","reads":0,"size":2}')
    bucket = kvpio.Bucket()
    bucket.set('my_key', {'baz': {'faz': [1, 2, 3]}})
    bucket.get('my_key/baz/faz')
    # (200, '[1,2,3]')
"""

from __future__ import annotations

import base64
import json as JSON
import threading
from typing import Any, Final

import requests
from cachetools import LRUCache

from .errors import KvpioTimeoutError, TransportError
from .transport import Transport

__all__ = [
    "Account",
    "Bucket",
    "ConnectionError",
    "Endpoint",
    "Templates",
    "Timeout",
    "api_base",
    "api_key",
    "api_ver",
    "http_methods",
    "load_json",
]

# The API key to use for authentication
api_key: str | None = None

# The API version in use, e.g., `v1`
api_ver: str = "v1"

# The base url of the API, e.g., _https://api.kvp.io_
api_base: str = "https://api.kvp.io"

# Toggle auto-parsing of JSON, default: `False`
load_json: bool = False

# The supported HTTP methods
http_methods: list[str] = ["get", "post", "delete"]

_TRANSPORTS: Final[LRUCache[tuple[str, str, str], Transport]] = LRUCache(maxsize=16)
_TRANSPORTS_LOCK: Final = threading.Lock()


class ConnectionError(TransportError, requests.exceptions.ConnectionError):
    """No answer came: both this package's ``TransportError`` and ``requests``' error.

    Code written for the original client caught ``requests`` exceptions;
    code written for this package catches :class:`TransportError`. Both work.
    """


class Timeout(KvpioTimeoutError, requests.exceptions.Timeout):
    """The server did not answer in time (see :class:`ConnectionError`)."""


_EMPTY_USER: Final = {"Authorization": "Basic " + base64.b64encode(b":").decode()}


def _transport(base: str, version: str, key: str) -> Transport:
    """The shared transport for these settings, made on first use."""
    cache_key = (base, version, key)
    with _TRANSPORTS_LOCK:
        transport = _TRANSPORTS.get(cache_key)
        if transport is None:
            # an empty key must not fall back to $KVPIO_APIKEY: see _EMPTY_USER
            transport = Transport(base, key or "-", version=version)
            _TRANSPORTS[cache_key] = transport
        return transport


def _path_url(url: str, params: Any = None) -> str:
    """The path and query ``requests`` would send for ``url`` with ``params``."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, params)
    return prepared.path_url


class Endpoint:
    """
    __Represents an API endpoint from the client-side's perspective.__

    This class should not need to be instantiated manually.

    - params:
        - name: name of the api endpoint to access, e.g., 'bucket'
    """

    name: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def auth(self) -> tuple[str | None, str]:
        """
        __Gets a `requests` compatible Basic Auth tuple.__
        """
        return (api_key, "")

    @property
    def url(self) -> str:
        """
        __Gets the compiled target url of the endpoint.__
        """
        return "/".join([api_base, api_ver, str(self.name)])

    def request(
        self, method: str, key: str = "", params: Any = None, json: Any = None
    ) -> tuple[int, Any]:
        """
        __A simple request wrapper. Used by get, post, etc. methods.__

        - params:
            - method: a supported HTTP verb
            - key: a key path appended to an endpoint url
            - params: the url parameters to pass to the endpoint
            - json: a JSON encodable value to pass to the endpoint

        - returns:
            - tuple: (status code, text), or (status code, decoded JSON) when
              `load_json` is true and the text is JSON
        """
        if method not in http_methods:
            raise Exception(f"Unsupported method attempted: {method}")
        # cause an exception if the data can't be jsonified
        JSON.dumps(json)
        body = None
        if json is not None:
            try:
                body = JSON.dumps(json, allow_nan=False).encode("utf-8")
            except ValueError as exc:
                raise requests.exceptions.InvalidJSONError(exc) from exc
        user = str(api_key)  # requests sent a None user name as "None"
        transport = _transport(api_base, api_ver, user)
        target = self._target(transport, key, params)
        # an empty key goes out empty, as requests sent it (the transport needs one)
        headers = _EMPTY_USER if not user else None
        try:
            response = transport.request(method.upper(), target, body=body, headers=headers)
        except KvpioTimeoutError as exc:
            raise Timeout(str(exc)) from exc
        except TransportError as exc:
            raise ConnectionError(str(exc)) from exc
        if load_json:
            try:
                return (response.status_code, JSON.loads(response.text))
            except (ValueError, RecursionError):
                pass
        return (response.status_code, response.text)

    def _target(self, transport: Transport, key: str, params: Any) -> str:
        """The request target below the transport's base, quoted as ``requests`` quotes it."""
        path_url = _path_url(f"{self.url}/{key}", params)
        prefix = _path_url(transport.base)
        if path_url.startswith(prefix):
            return path_url[len(prefix) :]
        # requests removed dot segments above the endpoint: send the key as given
        query = _path_url("http://h/", params).partition("?")[2]
        target = requests.utils.requote_uri(f"{self.name}/{key}")
        return f"{target}?{query}" if query else target


class Account(Endpoint):
    """
    __Provides access to account information.__
    """

    def __init__(self) -> None:
        super().__init__("account")

    def get(self) -> tuple[int, Any]:
        """
        __Requests the current account information, e.g.,__

            {'id': 'Account Name', 'email': 'you@domain.tld', 'reads': 154, 'size': 140762}

        - returns:
            - tuple: status code, JSON encoded string representation of the account
        """
        return self.request("get")


class Bucket(Endpoint):
    """
    __Provides access to bucket (key/value pair) storage.__
    """

    def __init__(self) -> None:
        super().__init__("bucket")

    def list(self) -> tuple[int, Any]:
        """
        __Retrieves the current list of keys.__

        - returns:
            - tuple: status code, JSON encoded list of keys
        """
        return self.request("get")

    def get(self, key: str) -> tuple[int, Any]:
        """
        __Retrieves the value stored at the key (an empty text when there is none).__

        - params:
            - key: the key or key path under which a value is stored

        - returns:
            - tuple: status code, JSON encoded string of the value
        """
        return self.request("get", key)

    def set(self, key: str, data: Any) -> tuple[int, Any]:
        """
        __Assigns a value to the key path.__

        - params:
            - key: the key or key path under which a value is stored
            - data: JSON encodable value to assign to store under key

        - returns:
            - tuple: status code, empty string
        """
        return self.request("post", key, json=data)

    def delete(self, key: str) -> tuple[int, Any]:
        """
        __Deletes a key, its value, and all values beneath it.__

        - params:
            - key: the key or key path under which a value is stored

        - returns:
            - tuple: status code, empty string
        """
        return self.request("delete", key)


class Templates(Endpoint):
    """
    __Provides access to templates storage.__
    """

    def __init__(self) -> None:
        super().__init__("templates")

    def list(self) -> tuple[int, Any]:
        """
        __Retrieves the current list of templates.__

        - returns:
            - tuple: status code, JSON encoded list of templates
        """
        return self.request("get")

    def get(self, key: str, data: Any = None, raw: bool = False) -> tuple[int, Any]:
        """
        __Retrieves the template stored at key, rendered with Jinja2.__

        Values come from the account's bucket; `data` overrides them. If
        `raw` is `True`, returns the template un-rendered.

        - params:
            - key: the key under which the template is stored
            - data: JSON encodable value used to override bucket data
            - raw: whether or not to render the template

        - returns:
            - tuple: status code, the rendered, or un-rendered, template document
        """
        return self.request("get", key, params={"raw": raw}, json=data)

    def set(self, key: str, template: Any) -> tuple[int, Any]:
        """
        __Stores the template document under key.__

        - params:
            - key: the key under which the template will be stored
            - template: the template document, optionally written with Jinja2

        - returns:
            - tuple: status code, empty string
        """
        return self.request("post", key, json=template)

    def delete(self, key: str) -> tuple[int, Any]:
        """
        __Deletes a key and its template document.__

        - params:
            - key: the key under which the template is stored

        - returns:
            - tuple: status code, empty string
        """
        return self.request("delete", key)
