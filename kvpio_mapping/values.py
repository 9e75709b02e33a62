"""JSON values: check, encode and decode them the same way on both ends.

A value is ``None``, ``bool``, ``int``, finite ``float``, ``str``, a ``list``
(or ``tuple``, which comes back as a list) of values, or a ``dict`` with
``str`` keys of values, nested at most :data:`MAX_NESTING` levels.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from typing import Any, Final

from .errors import InvalidPathError
from .paths import MAX_DEPTH, check_segment

MAX_NESTING: Final = 100
READ_NESTING: Final = MAX_NESTING + MAX_DEPTH
"""How deep a value read back may nest: a value written at a 32-segment path
nests up to ``MAX_NESTING`` levels below it, so its ancestors nest deeper."""

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_SCALARS: Final = (str, int, float, bool, type(None))


def check(value: Any, addressable: bool = False, _depth: int = 0) -> None:
    """Raise ``TypeError`` or ``ValueError`` if ``value`` is not a JSON value.

    ``json.dumps`` alone would turn ``{1: 'a'}`` into ``{"1": "a"}`` and a
    ``float('nan')`` into ``NaN``; neither would read back as written.
    ``addressable``: every object key must also be a valid path segment
    (:func:`kvpio_mapping.paths.check_segment`), so that whatever is stored
    can be read back by path; else :class:`~kvpio_mapping.errors.InvalidPathError`.
    """
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and (value != value or value in (float("inf"), -float("inf"))):
            raise ValueError(f"{value!r} is not a JSON value")
        if isinstance(value, str) and not value.isascii():
            _check_text(value)
        return
    if _depth >= MAX_NESTING:
        raise ValueError(f"value nests deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be str, not {type(key).__name__} ({key!r})")
            if not key.isascii():
                _check_text(key)
            if addressable:
                _check_key(key)
            check(item, addressable, _depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check(item, addressable, _depth + 1)
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value: {value!r}")


def _check_key(key: str) -> None:
    try:
        check_segment(key)
    except InvalidPathError as exc:
        raise InvalidPathError(
            f"object key {key!r} could not be read back by path: {exc}"
        ) from None


def encode(value: Any, addressable: bool = False) -> bytes:
    """Check ``value`` (see :func:`check`) and return its compact UTF-8 JSON text."""
    check(value, addressable)
    return _encoder.encode(value).encode()


def dump(value: Any) -> str:
    """The compact JSON text of a value known to be valid, without checking it again.

    For values decoded from trusted, already-checked JSON (say, read back
    from storage); the text is the same as ``encode(value).decode()``. Use
    :func:`encode` for anything else.
    """
    return _encoder.encode(value)


def etag(text: bytes) -> str:
    """The strong ETag of a body (docs/protocol.md): a quoted BLAKE2b-128 hex digest.

    The server tags every body with it; a client may compute the tag of a
    value it wrote from ``encode(value)``, which is the text the server stores.
    """
    return '"' + hashlib.blake2b(text, digest_size=16).hexdigest() + '"'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:20]} is beyond the range of a float")
    return number


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
"""One strict decoder: ``json.loads`` with an option builds a new one per call (3 us)."""
_reader = json.JSONDecoder(parse_constant=_reject_constant)
""":data:`_decoder` without the range check of each float, which costs a third more time."""


def decode(data: bytes | str, max_nesting: int = MAX_NESTING) -> Any:
    """Parse JSON text strictly (no ``NaN``/``Infinity``, no number beyond the range of a
    float, such as ``1e400``, which ``json`` reads as infinity, no lone surrogate);
    ``ValueError`` if it is not valid.

    Nesting deeper than ``max_nesting`` is refused too, so a hostile body
    cannot exhaust the recursion limit of code that walks the value.
    """
    return _decode(data, max_nesting, _decoder, strict=True)


def load(data: bytes | str, max_nesting: int = READ_NESTING) -> Any:
    """:func:`decode` for text a kvpio server wrote, which never holds a number beyond the
    range of a float: the same value, without checking each float's range, or its
    strings for lone surrogates, again."""
    return _decode(data, max_nesting, _reader, strict=False)


def _decode(data: bytes | str, max_nesting: int, decoder: json.JSONDecoder, *, strict: bool) -> Any:
    try:
        if not isinstance(data, str):
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        elif data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        value = decoder.decode(data)
    except RecursionError:
        raise ValueError(f"value nests deeper than {MAX_NESTING} levels") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
        raise ValueError(
            f"an integer has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if isinstance(value, dict | list):
        check_nesting(value, max_nesting)
    if strict and _SURROGATE_ESCAPE.search(data):
        _check_characters(value)
    return value


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
"""An escape that may be half of a surrogate pair (or, after a backslash, no escape at all)."""


def _check_characters(value: Any) -> None:
    """``ValueError`` if a string of ``value`` holds a lone surrogate, a code point that is no
    character: UTF-8 cannot hold it, so no stored text or answer could."""
    _check_text(_encoder.encode(value))


def _check_text(text: str) -> None:
    """``ValueError`` if ``text`` holds a lone surrogate (see :func:`_check_characters`)."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise _lone_surrogate(exc) from None


def _lone_surrogate(exc: UnicodeEncodeError) -> ValueError:
    """The ``ValueError`` of a text UTF-8 cannot hold: it has a lone surrogate."""
    return ValueError(f"\\u{ord(exc.object[exc.start]):04x} is a lone surrogate, not a character")


def check_nesting(value: dict[str, Any] | list[Any], limit: int) -> None:
    """``ValueError`` if the decoded container ``value`` nests deeper than ``limit`` levels."""
    _check_nesting(value, 1, limit)


def _check_nesting(value: Any, depth: int, limit: int) -> None:
    if depth > limit:
        raise ValueError(f"value nests deeper than {limit} levels")
    items = value.values() if type(value) is dict else value
    for item in items:
        if type(item) in (dict, list):
            _check_nesting(item, depth + 1, limit)


def copy(value: Any) -> Any:
    """A deep copy of a decoded JSON value, much faster than ``copy.deepcopy``."""
    kind = type(value)
    if kind is dict:
        return {key: copy(item) for key, item in value.items()}
    if kind is list:
        return [copy(item) for item in value]
    return value
