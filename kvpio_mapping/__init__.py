"""kvpio-mapping: a remote kvp.io v1 bucket that behaves like a local dict."""

import importlib
from typing import TYPE_CHECKING, Any

from .bucket import KVBucket
from .cache import CacheInfo
from .changes import Change
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
from .watch import Watch
from .writeback import LiveDict, LiveList, WriteBackBucket

__version__ = "0.1.0"

_ASYNC = {
    "AsyncConnection": "async_connection",
    "AsyncKVBucket": "async_bucket",
    "AsyncTemplateStore": "async_templates",
    "AsyncTemplateWatch": "async_templates",
    "AsyncTransaction": "async_bucket",
    "AsyncWatch": "async_watch",
    "connect_async": "async_connection",
}


def __getattr__(name: str) -> Any:
    """The asyncio client, imported on first use: it needs the ``async`` extra (httpx)."""
    module = _ASYNC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        imported = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != "httpx":
            raise
        raise ImportError(f"{name} needs httpx: pip install 'kvpio-mapping[async]'") from exc
    return getattr(imported, name)


if TYPE_CHECKING:
    from .async_bucket import AsyncKVBucket, AsyncTransaction
    from .async_connection import AsyncConnection, connect_async
    from .async_templates import AsyncTemplateStore, AsyncTemplateWatch
    from .async_watch import AsyncWatch

__all__ = [
    "AsyncConnection",
    "AsyncKVBucket",
    "AsyncTemplateStore",
    "AsyncTemplateWatch",
    "AsyncTransaction",
    "AsyncWatch",
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
    "connect_async",
]
