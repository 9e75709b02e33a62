"""The server's JSON: :mod:`kvpio_mapping.values`' texts and values, with orjson where it agrees.

orjson encodes and decodes several times faster than :mod:`json`, which
matters for large bodies, but it does not always give the same answer:
it reads an integer beyond 64 bits as a float, refuses what ``json``
accepts (``1e400``, an escaped lone surrogate, a byte order mark, UTF-16
text) and writes some floats otherwise (``1e16``, ``0.00001`` where
``json`` writes ``1e+16``, ``1e-05``). So each function here uses orjson
only where its answer is known to be ``json``'s, and :mod:`json` (through
:mod:`~kvpio_mapping.values`) for the rest: the texts the server stores,
their ETags, and what it accepts and refuses stay exactly as with ``json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import orjson

from .. import values
from . import collector

HELD_OFF_FROM: Final = 1 << 16
"""Bodies of this many bytes or more are decoded with the garbage collector held off."""

_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS: Final = b"0" * 19
"""19 digits in a row: maybe an integer orjson would read as a float (shorter ones fit 64 bits).

Searched for as zeros once every digit is made one: far faster than a regular expression."""
_NUMBER_BYTES_AS_ZERO: Final = bytes.maketrans(b"-0123456789", b"0" * 11)
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_WIDE: Final = 32
"""Children from which :func:`_counted` counts a container part by part rather than encoding it."""
_LOOKED_AT: Final = 32
"""Children :func:`_counted` looks at, at most, before :func:`dump_within` encodes the value."""
_ROUNDS_PER_BYTE: Final = 8
"""Bytes of brackets :func:`_nests_within` may scan per byte it starts with, before giving up."""
_EXPONENT: Final = b"0e0"
"""A digit, ``e``, a digit or minus sign, once each is made ``0``: where an exponent may be."""


def _as_json_writes(text: bytes) -> bool:
    """Whether orjson's ``text`` is ``json``'s: no float in it has an exponent or is below 1e-4.

    Strings may look alike (``"0.00001"``, ``"1e5"``): they only cost the fast path.
    """
    return b"0.0000" not in text and _EXPONENT not in text.translate(_NUMBER_BYTES_AS_ZERO)


def has_long_digits(data: bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row (maybe an integer beyond 64 bits)."""
    return _LONG_DIGITS in data.translate(_DIGITS_AS_ZERO)


def decode(data: bytes, max_nesting: int = values.MAX_NESTING) -> Any:
    """:func:`kvpio_mapping.values.decode`: the same value, or the same ``ValueError``."""
    if not has_long_digits(data):
        try:
            if len(data) < HELD_OFF_FROM:
                value = orjson.loads(data)
            else:
                with collector.held_off():
                    value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (see the module's notes): its answer decides
        else:
            if type(value) is dict or type(value) is list:
                within = _nests_within(data, max_nesting)
                if within is None:
                    values.check_nesting(value, max_nesting)
                elif not within:
                    raise ValueError(f"value nests deeper than {max_nesting} levels")
            return value
    return values.decode(data, max_nesting)


def _nests_within(data: bytes, limit: int) -> bool | None:
    """Whether the valid JSON text ``data`` nests at most ``limit`` levels; None: not known.

    Read from the text, several times faster than walking the decoded value:
    with the escaped backslashes and quotes dropped, then all but quotes and
    brackets, each pair of adjacent quotes goes (which leaves every other
    byte as much inside a string as it was). Should a quote remain, a string
    holds a bracket: None. Else each round drops the innermost pairs, so the
    text is gone after as many rounds as it nests deep. None too when the
    rounds would scan more than :data:`_ROUNDS_PER_BYTE` times the brackets.
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = data.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets:
        return None
    budget = _ROUNDS_PER_BYTE * len(brackets)
    for _ in range(limit):
        if not brackets:
            return True
        budget -= len(brackets)
        if budget < 0:
            return None
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def load(data: bytes) -> Any:
    """The value of JSON text known to be valid (the server's own): :func:`decode`'s, unchecked.

    Stored text was checked when it was written, so its nesting is not measured again.
    """
    if not has_long_digits(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # maybe valid for json (see the module's notes): its answer decides
    return json.loads(data)


def dump(value: Any) -> str:
    """:func:`kvpio_mapping.values.dump`: the compact JSON text of a value known to be valid."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate
        return values.dump(value)
    return text.decode() if _as_json_writes(text) else values.dump(value)


def dump_within(value: Any, limit: int) -> str | None:
    """:func:`dump` of ``value`` if its text is at most ``limit`` UTF-8 bytes, else None.

    A value whose orjson text is over twice the limit is known to be too long
    without encoding it again: ``json`` writes every float at most 2 bytes
    shorter (``1e-05`` for ``0.00001``), and such a float takes at least 7.
    A container that a few of its parts already show to be that long is not
    encoded at all (:func:`_counted`).
    """
    kind = type(value)
    if (kind is dict or kind is list) and _counted(value, 2 * limit, [_LOOKED_AT]) > 2 * limit:
        return None
    try:
        fast = orjson.dumps(value)
    except orjson.JSONEncodeError:
        text = values.dump(value)
        return text if len(text.encode()) <= limit else None
    if len(fast) > 2 * limit:
        return None
    if _as_json_writes(fast):
        return fast.decode() if len(fast) <= limit else None
    text = values.dump(value)
    return text if len(text.encode()) <= limit else None


def _counted(value: dict[str, Any] | list[Any], limit: int, budget: list[int]) -> int:
    """At most twice the bytes of the JSON text of ``value``, counted until over ``limit``.

    Keys, strings, brackets and separators count what they take at least; a
    child container with under :data:`_WIDE` children counts its orjson
    text, a wider one is counted the same way in turn; ``budget`` bounds the
    children looked at. So a big value is known to be big from a few of its
    parts, and a small one costs little more than encoding it.
    """
    counted = 1 + len(value)  # brackets and commas
    if type(value) is dict:
        counted += 3 * len(value) + sum(map(len, value))  # each key, quoted, and a colon
        children: Iterable[Any] = value.values()
    else:
        children = value
    for child in children:
        if counted > limit or budget[0] <= 0:
            break
        budget[0] -= 1
        kind = type(child)
        if kind is str:
            counted += len(child) + 2
        elif kind is dict or kind is list:
            if len(child) >= _WIDE:
                counted += _counted(child, limit - counted, budget)
            else:
                try:
                    counted += len(orjson.dumps(child))
                except orjson.JSONEncodeError:  # a part only json writes
                    counted += 2
        else:
            counted += 1
    return counted


def dump_checked(value: Any) -> bytes | None:
    """orjson's UTF-8 text of ``value`` if it is :func:`dump`'s, else None.

    A part's orjson text is a piece of the whole's, so when the whole passes,
    bare ``orjson.dumps`` of any part of it is :func:`dump`'s text too: one
    check of the whole spares each part the checks.
    """
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    return text if _as_json_writes(text) else None
