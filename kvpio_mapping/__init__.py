"""kvpio-mapping: a remote kvp.io v1 bucket that behaves like a local dict."""

from .bucket import KVBucket
from .cache import CacheInfo
from .connection import Connection, connect
from .errors import (
    AuthenticationError,
    InvalidPathError,
    KvpioError,
    KvpioTimeoutError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RequestError,
    ServerError,
    TemplateRenderError,
    TransportError,
)
from .templates import TemplateStore

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CacheInfo",
    "Connection",
    "InvalidPathError",
    "KVBucket",
    "KvpioError",
    "KvpioTimeoutError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "RequestError",
    "ServerError",
    "TemplateRenderError",
    "TemplateStore",
    "TransportError",
    "connect",
]
