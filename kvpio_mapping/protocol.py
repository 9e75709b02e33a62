"""The kvp.io v1 wire protocol of ``docs/protocol.md`` from the client's side, with no I/O.

Every client of this package (``KVBucket``, ``AsyncKVBucket``, the template
stores, ``Connection``, the CLI, ``compat``) builds its requests with the
:class:`Request` builders here and reads answers only through the readers
here, so an operation is spelled once and a status, a missing answer or a
body is never interpreted two ways. Readers take an answer that has already
arrived (anything with ``status_code``, ``headers``, ``content`` and
``url``, as ``requests`` and ``httpx`` responses have) and return what it
means or raise the matching exception of :mod:`kvpio_mapping.errors`.

Idempotence, the rule for what may be sent twice, lives here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import unquote

from . import paths, values
from .errors import (
    AuthenticationError,
    ConflictError,
    PayloadTooLargeError,
    PreconditionFailedError,
    ProtocolError,
    RequestError,
    ServerError,
    TemplateRenderError,
)
from .paths import MISSING

MISSING_HEADER: Final = "Kvpio-Missing"
COUNT_HEADER: Final = "Kvpio-Count"
NAMES_HEADER: Final = "Kvpio-Names"
ANY_NAME: Final = "*"
"""``Kvpio-Names: *``: the names a rendering used are too many to list; any write may matter."""
UNKNOWN_KEY: Final = "unknown API key"


class Answer(Protocol):
    """What the rules need of an HTTP answer (a ``requests`` or ``httpx`` response)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def url(self) -> Any: ...


class _NotModified:
    """The type of :data:`NOT_MODIFIED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_MODIFIED"


NOT_MODIFIED: Final = _NotModified()
"""What :func:`value` returns for the 304 of a revalidation the client asked for."""


class Request(NamedTuple):
    """One request to send: ``target`` is percent-encoded below ``/v1/`` (query included);
    ``idempotent`` None means :func:`idempotent` decides whether it may be resent."""

    method: str
    target: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    idempotent: bool | None = None


# building requests, one builder per operation


def bucket_target(full: str) -> str:
    """The target of the valid full path ``full`` (``''``: the whole bucket)."""
    return "bucket/" + paths.url_quote(tuple(full.split("/"))) if full else "bucket/"


def read(full: str, etag: str | None = None) -> Request:
    """Read the value at ``full``; with ``etag``, revalidate a copy that has it."""
    headers = {"If-None-Match": etag} if etag else None
    return Request("GET", bucket_target(full), headers=headers)


def list_keys(root: str = "") -> Request:
    """List the keys of the bucket, or of the object at ``root``."""
    return Request("GET", bucket_target(root) + "?keys=true" if root else "bucket/")


def count(full: str) -> Request:
    """Count the keys or items of the value at ``full`` (``''``: the bucket's top-level keys)."""
    return Request("GET", bucket_target(full) + "?count=true")


def snapshot() -> Request:
    """Read the whole bucket as one object."""
    return Request("GET", "bucket/?values=true")


def write(full: str, body: bytes) -> Request:
    """Store the encoded value ``body`` at ``full``."""
    return Request("POST", bucket_target(full), body=body)


def write_many(pairs: list[tuple[str, Any]]) -> Request:
    """Store each ``(full path, checked value)`` in order, atomically."""
    as_object = dict(pairs)
    # An object is the plainer body; a repeated path needs the ordered list of pairs.
    body = values.dump(as_object if len(as_object) == len(pairs) else pairs).encode()
    return Request("POST", "bucket/", body=body)


def pop(full: str) -> Request:
    """Remove ``full`` and answer what was there."""
    return Request("DELETE", bucket_target(full) + "?pop=true")


def delete(full: str) -> Request:
    """Remove ``full`` (no answer body)."""
    return Request("DELETE", bucket_target(full))


def clear(root: str = "") -> Request:
    """Empty the bucket, or make the object at ``root`` ``{}``."""
    if root:
        return Request("POST", bucket_target(root), body=b"{}")
    return Request("DELETE", "bucket/?all=true")


def operate(full: str, op: str, body: bytes) -> Request:
    """An atomic ``increment``, ``append`` or ``merge`` at ``full`` (never resent)."""
    return Request("POST", f"{bucket_target(full)}?op={op}", body=body, idempotent=False)


def write_if(method: str, full: str, body: bytes | None, etag: str | None) -> Request:
    """A write (``POST``) or delete that applies only if ``full`` has ``etag`` (None: absent)."""
    headers = {"If-None-Match": "*"} if etag is None else {"If-Match": etag}
    return Request(method, bucket_target(full), body=body, headers=headers, idempotent=False)


def commit(body: bytes) -> Request:
    """A transaction's commit (never resent)."""
    return Request("POST", "bucket/?commit=true", body=body, idempotent=False)


def watch(full: str, revision: int | None, snapshot: bool = True) -> Request:
    """Open the change feed of ``full`` ("Live"): from a snapshot, after ``revision`` if
    given, with no value at all if not ``snapshot``."""
    headers = {"Accept": "text/event-stream"}
    if revision is not None:
        headers["Last-Event-ID"] = str(revision)
    target = bucket_target(full) + ("" if snapshot else "?snapshot=false")
    return Request("GET", target, headers=headers)


def account() -> Request:
    """The account's details."""
    return Request("GET", "account/")


def template_target(name: object) -> str:
    """The target of the template ``name`` (checked as a path)."""
    return "templates/" + paths.url_quote(paths.parse(name))


def template(name: object, *, raw: bool = False, data: bytes | None = None) -> Request:
    """Read the template ``name``: rendered (with ``data`` overriding names), or its source."""
    return Request("GET", template_target(name) + f"?raw={raw}", body=data)


def list_templates() -> Request:
    """List the template names."""
    return Request("GET", "templates/")


def write_template(name: object, source: str) -> Request:
    """Store the template source ``source`` as ``name``."""
    return Request("POST", template_target(name), body=values.encode(source))


def delete_template(name: object) -> Request:
    """Remove the template ``name`` (no answer body)."""
    return Request("DELETE", template_target(name))


def pop_template(name: object) -> Request:
    """Remove the template ``name`` and answer its source."""
    return Request("DELETE", template_target(name) + "?pop=true")


def idempotent(method: str, target: str) -> bool:
    """Whether sending ``method target`` twice leaves the same state and answer as once.

    Reads and writes of a value are. A pop is not (the second answer is
    "missing"), nor is deleting a path whose last segment may be a list
    position (the second removes the next item).
    """
    if method != "DELETE":
        return True
    path, _, query = target.partition("?")
    if "pop=true" in query:
        return False
    last = path.rstrip("/").rpartition("/")[2]
    return not (last.isascii() and last.isdigit())


def _where(answer: Answer) -> str:
    return str(answer.url)


def _is_missing(answer: Answer) -> bool:
    return answer.headers.get(MISSING_HEADER, "").lower() == "true"


def check(answer: Answer) -> None:
    """Raise unless ``answer`` is a success (200); 4xx and 5xx as the protocol defines them.

    Only the protocol's unknown-key answer (404 ``{"error": "unknown API
    key"}``) is an :class:`AuthenticationError`; any other 404, a redirect,
    a 204 or an unrequested 304 is a :class:`ProtocolError`.
    """
    status = answer.status_code
    if status == 200:
        return
    if status < 400:
        raise ProtocolError(
            f"{_where(answer)} answered HTTP {status}{_location(answer)},"
            " which a kvpio v1 server never sends here"
        )
    message = error_message(answer)
    if status == 404:
        if message == UNKNOWN_KEY:
            raise AuthenticationError(f"the server does not know this API key ({_where(answer)})")
        raise ProtocolError(
            f"{_where(answer)} answered 404 ({message}): the URL does not look like"
            " a kvpio v1 server"
        )
    if status == 409:
        raise ConflictError(message, status)
    if status == 412:
        raise PreconditionFailedError(message, status)
    if status == 413:
        raise PayloadTooLargeError(message, status)
    if status == 422:
        raise TemplateRenderError(message, status)
    if status < 500:
        raise RequestError(message, status)
    raise ServerError(f"the server failed with HTTP {status}: {message}", status)


def done(answer: Answer) -> None:
    """Raise unless ``answer`` is the success of a write that answers nothing: a 200 with an
    empty body. Any body there (a proxy's page, another server's) is a :class:`ProtocolError`:
    the write's fate is not known, and it is never reported done."""
    check(answer)
    if answer.content:
        raise ProtocolError(
            f"{_where(answer)} answered a write with a body, which a kvpio v1 server never sends"
        )


def _location(answer: Answer) -> str:
    location = answer.headers.get("Location")
    return f" (to {location})" if location else ""


def error_message(answer: Answer) -> str:
    """The ``error`` of a JSON error body, else the start of the body as text."""
    text = answer.content[:200].decode("utf-8", "replace")
    try:
        payload = values.decode(answer.content)
    except ValueError:
        return text or f"HTTP {answer.status_code}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return text


def _decode(answer: Answer) -> Any:
    try:
        return values.load(answer.content)
    except ValueError as exc:
        raise ProtocolError(f"{_where(answer)} answered a body that is not JSON: {exc}") from None


def value(answer: Answer, revalidating: bool = False) -> Any:
    """The JSON value a bucket read or pop answered, or ``MISSING`` for the missing answer.

    ``revalidating``: the request carried ``If-None-Match``, so a 304 means
    :data:`NOT_MODIFIED`. An empty body without ``Kvpio-Missing: true`` is a
    :class:`ProtocolError`, never "missing".
    """
    if revalidating and answer.status_code == 304:
        return NOT_MODIFIED
    check(answer)
    return _value_body(answer)


def tagged(answer: Answer) -> tuple[Any, str | None]:
    """The value (or ``MISSING``) and ETag a read answered, or that a 412 to a
    conditional write carried (the value the write found)."""
    if answer.status_code != 412:
        check(answer)
    found = _value_body(answer)
    if found is MISSING:
        return found, None
    etag = answer.headers.get("ETag")
    if not etag:
        raise ProtocolError(f"{_where(answer)} answered a value without its ETag")
    return found, etag


def refusal(answer: Answer) -> Any:
    """The JSON body of a 412 to a commit (its failed checks), which nests values."""
    try:
        return values.load(answer.content, values.READ_NESTING + 4)
    except ValueError as exc:
        raise ProtocolError(f"{_where(answer)} answered a body that is not JSON: {exc}") from None


def _value_body(answer: Answer) -> Any:
    """The value in the body of a value answer, or MISSING for the missing answer."""
    if _is_missing(answer):
        if answer.content:
            raise ProtocolError(f"{_where(answer)} answered {MISSING_HEADER} with a body")
        return MISSING
    if not answer.content:
        raise ProtocolError(
            f"{_where(answer)} answered an empty body without {MISSING_HEADER}: true"
        )
    return _decode(answer)


def document(answer: Answer, *kinds: type[Any]) -> Any:
    """The JSON body of a listing, snapshot, account or operation answer, which must be
    of one of ``kinds`` (exactly: a ``bool`` is not an ``int``)."""
    check(answer)
    found = _decode(answer)
    if type(found) not in kinds:
        raise ProtocolError(
            f"{_where(answer)} answered a {type(found).__name__} where a"
            f" {' or '.join(kind.__name__ for kind in kinds)} belongs"
        )
    return found


def keys(answer: Answer) -> list[str]:
    """The key list a listing answered (every item a ``str``)."""
    found: list[Any] = document(answer, list)
    if not all(type(item) is str for item in found):
        raise ProtocolError(f"{_where(answer)} answered a key list with a key that is not text")
    return found


def length(answer: Answer, root: bool) -> tuple[int, bool | None]:
    """How many keys or items a count answered, as a view sees them, and whether the
    server counted (None: the answer cannot tell).

    Nothing there, or a scalar (409), has none. An answer without
    ``Kvpio-Count`` comes from a server that ignores ``count=true``: it is
    the key listing (at the ``root`` of the bucket) or the value, whose
    length is taken.
    """
    if answer.status_code == 409:
        return 0, True
    check(answer)
    if _is_missing(answer):
        _value_body(answer)
        return 0, None
    if COUNT_HEADER in answer.headers:
        number: int = document(answer, int)
        if number < 0 or answer.headers[COUNT_HEADER] != str(number):
            raise ProtocolError(
                f"{_where(answer)} answered a count of {number} with {COUNT_HEADER}:"
                f" {answer.headers[COUNT_HEADER]}"
            )
        return number, True
    if root:
        return len(keys(answer)), False
    found = _value_body(answer)
    return (len(found) if type(found) in (dict, list) else 0), False


def template_names(answer: Answer) -> frozenset[str]:
    """The top-level names a rendering used (``Kvpio-Names``; :data:`ANY_NAME` for any)."""
    header = answer.headers.get(NAMES_HEADER, "")
    return frozenset(unquote(item) for item in header.split(",") if item)


def uses(names: frozenset[str], top: str) -> bool:
    """Whether a rendering that used ``names`` may change with the top-level key ``top``."""
    return top in names or ANY_NAME in names


def revision(answer: Answer) -> int:
    """The bucket revision an answer was made at (``Kvpio-Revision``; 0 if not said)."""
    return int(answer.headers.get("Kvpio-Revision", "0"))


def text(answer: Answer) -> Any:
    """The text of a template answer (rendered or source), or ``MISSING``."""
    check(answer)
    if _is_missing(answer):
        if answer.content:
            raise ProtocolError(f"{_where(answer)} answered {MISSING_HEADER} with a body")
        return MISSING
    try:
        return answer.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{_where(answer)} answered text that is not UTF-8: {exc}") from None
