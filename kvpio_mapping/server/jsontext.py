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
import re
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
_DIGITS: Final = b"0123456789"
_EXPONENT: Final = re.compile(rb"e[-0-9]")
"""Where an exponent may follow a digit (searched for the ``e``: far faster than for the digit)."""


def _as_json_writes(text: bytes) -> bool:
    """Whether orjson's ``text`` is ``json``'s: no float in it has an exponent or is below 1e-4."""
    if b"0.0000" in text:
        return False
    found = _EXPONENT.search(text)
    while found is not None:
        if text[found.start() - 1] in _DIGITS:  # a JSON text never starts with "e"
            return False
        found = _EXPONENT.search(text, found.end())
    return True


def decode(data: bytes, max_nesting: int = values.MAX_NESTING) -> Any:
    """:func:`kvpio_mapping.values.decode`: the same value, or the same ``ValueError``."""
    if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO):
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
                values.check_nesting(value, max_nesting)
            return value
    return values.decode(data, max_nesting)


def load(data: bytes) -> Any:
    """The value of JSON text known to be valid (the server's own): :func:`decode`'s, unchecked.

    Stored text was checked when it was written, so its nesting is not measured again.
    """
    if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO):
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
    """
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
