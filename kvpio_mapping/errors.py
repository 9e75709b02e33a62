"""One exception hierarchy for the client.

Each class also subclasses the builtin it resembles, so callers may catch
either: an invalid path is a ``ValueError``, a wrong API key a
``PermissionError``, a server that cannot be reached a ``ConnectionError``.
``KeyError`` is raised only for "no such key", never for a network problem.
"""

from __future__ import annotations


class KvpioError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidPathError(KvpioError, ValueError):
    """A key path is malformed (empty, an empty segment, too deep, ...); nothing was sent."""


class AuthenticationError(KvpioError, PermissionError):
    """The server does not know the API key (the protocol's 404 ``unknown API key``)."""


class RequestError(KvpioError, ValueError):
    """The server refused the request as invalid (a 4xx answer) and changed nothing."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


class PayloadTooLargeError(RequestError):
    """The body was over the server's size limit (413)."""


class PreconditionFailedError(RequestError):
    """A conditional request's precondition did not hold (412)."""


class ConflictError(RequestError):
    """An atomic operation did not fit the value it targets (409), say incrementing a string."""


class TransactionConflictError(KvpioError, RuntimeError):
    """A transaction met a conflicting write on every attempt; nothing of it was written."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class TemplateRenderError(RequestError):
    """A template failed to render or hit one of the server's render limits."""


class TransportError(KvpioError, ConnectionError):
    """No usable answer came back: the connection failed, timed out or the server failed."""


class KvpioTimeoutError(TransportError, TimeoutError):
    """The operation did not complete within its ``timeout`` (retries included)."""


class ProtocolError(TransportError):
    """An answer came that the kvp.io v1 protocol does not allow (a redirect, an empty
    answer without ``Kvpio-Missing``, a body that is not JSON, a 404 from something that
    is not a kvpio v1 server): nothing is read from it, and no cache changes."""


class ServerError(TransportError):
    """The server answered 5xx, after the retries that were safe to make."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
