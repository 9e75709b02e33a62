"""kvpio-mapping: a remote kvp.io v1 bucket that behaves like a local dict."""

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

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "InvalidPathError",
    "KvpioError",
    "KvpioTimeoutError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "RequestError",
    "ServerError",
    "TemplateRenderError",
    "TransportError",
]
