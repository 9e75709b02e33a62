"""kvpio-mapping: a remote kvp.io v1 bucket that behaves like a local dict."""

from .bucket import KVBucket
from .cache import CacheInfo
from .connection import Connection, connect
from .errors import (
    AuthenticationError,
    ConflictError,
    InvalidPathError,
    KvpioError,
    KvpioTimeoutError,
    PayloadTooLargeError,
    PreconditionFailedError,
    ProtocolError,
    RequestError,
    ServerError,
    TemplateRenderError,
    TransactionConflictError,
    TransportError,
)
from .sharing import Transaction, Versioned
from .templates import TemplateStore, TemplateWatch
from .watch import Change, Watch
from .writeback import LiveDict, LiveList, WriteBackBucket

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CacheInfo",
    "Change",
    "ConflictError",
    "Connection",
    "InvalidPathError",
    "KVBucket",
    "KvpioError",
    "KvpioTimeoutError",
    "LiveDict",
    "LiveList",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "ProtocolError",
    "RequestError",
    "ServerError",
    "TemplateRenderError",
    "TemplateStore",
    "TemplateWatch",
    "Transaction",
    "TransactionConflictError",
    "TransportError",
    "Versioned",
    "Watch",
    "WriteBackBucket",
    "connect",
]
