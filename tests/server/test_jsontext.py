"""The server's orjson-backed JSON gives exactly the answers of :mod:`kvpio_mapping.values`."""

from __future__ import annotations

import gc
import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvpio_mapping import values
from kvpio_mapping.server import jsontext

FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [1e16, 1e-5, 1.5e-7, 0.0001, 9.999e-5, 1e15, 123456789012345680.0, 5e-324, -0.0]
)
INTEGERS = st.integers() | st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**40])
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _answer(decode: Any, data: bytes, limit: int = values.MAX_NESTING) -> tuple[str, Any]:
    """What a decoder makes of ``data``: its value as text (floats exactly), or its error."""
    try:
        return "value", json.dumps(decode(data, limit), allow_nan=True) + repr(decode(data, limit))
    except ValueError as exc:
        return "error", str(exc)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_dump_is_values_dump(value: Any) -> None:
    assert jsontext.dump(value) == values.dump(value)


@pytest.mark.parametrize(
    "value",
    [
        1e16,
        1e-5,
        0.00012,
        [0.00001, "0.0000 as text"],
        2**64,
        -(2**63) - 1,
        "\ud800",
        {"key": "\x7f\x00\u2028\U0001f600"},
        float(2**53),
    ],
)
def test_dump_of_forms_orjson_writes_otherwise(value: Any) -> None:
    assert jsontext.dump(value) == values.dump(value)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_decode_of_valid_text_is_values_decode(value: Any) -> None:
    data = values.dump(value).encode()
    assert _answer(jsontext.decode, data) == _answer(values.decode, data)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=40) | st.text(alphabet='[]{}",:0123456789.eE+-\\ untrf', max_size=40))
@example(b"18446744073709551616")
@example(b"-9223372036854775809")
@example(b"1e400")
@example(b"NaN")
@example(b'"\\ud800"')
@example(b"\xef\xbb\xbf{}")
@example('"é"'.encode("utf-16"))
@example(b'"\xff"')
@example(b'{"a":1,"a":2}')
@example(b"[" * 300 + b"]" * 300)
@example(b"")
def test_decode_of_any_bytes_is_values_decode(data: bytes | str) -> None:
    raw = data if isinstance(data, bytes) else data.encode()
    assert _answer(jsontext.decode, raw) == _answer(values.decode, raw)


@pytest.mark.parametrize("depth", [values.MAX_NESTING, values.MAX_NESTING + 1])
def test_decode_keeps_the_nesting_limit(depth: int) -> None:
    data = b"[" * depth + b"]" * depth
    assert _answer(jsontext.decode, data) == _answer(values.decode, data)


BRACKETY = st.recursive(
    st.integers() | st.text(alphabet='[]{}"\\/ab'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="[]{}a"), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(BRACKETY, st.integers(1, 6), st.booleans())
def test_decode_measures_nesting_as_values_decode(value: Any, limit: int, indent: bool) -> None:
    data = json.dumps(value, indent=1 if indent else None, ensure_ascii=False).encode()
    assert _answer(jsontext.decode, data, limit) == _answer(values.decode, data, limit)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 60 + b"1" + b"]" * 60,  # many rounds for few brackets: walked instead
        b"[" + b",".join([b"[" * 99 + b"]" * 99] * 500) + b"]",
        b"[" + b'"]]]",' * 50 + b"[" * 99 + b"]" * 99 + b"]",  # a string holds brackets: walked
    ],
)
@pytest.mark.parametrize("limit", [values.MAX_NESTING, values.MAX_NESTING - 1, 59, 60])
def test_decode_measures_deep_and_odd_texts_as_values_decode(data: bytes, limit: int) -> None:
    assert _answer(jsontext.decode, data, limit) == _answer(values.decode, data, limit)


@settings(max_examples=400, deadline=None)
@given(VALUES, st.integers(0, 200))
def test_dump_within_is_dump_when_short_enough(value: Any, limit: int) -> None:
    text = values.dump(value)
    assert jsontext.dump_within(value, limit) == (text if len(text.encode()) <= limit else None)


@pytest.mark.parametrize(
    "value",
    [
        {"meta": 1, "data": [{"x": "y" * 100, "n": i} for i in range(2000)]},
        {"data": {f"k{i}": [0.00001] * 20 for i in range(2000)}},
        [[0.00001] * 20] * 40,
        {"a": [2**64] * 20, "b": [[2**64]] * 40, "c": "z" * 300},
    ],
    ids=["wide", "floats json writes shorter", "narrow floats", "parts only json writes"],
)
def test_dump_within_of_big_values_near_and_far_from_the_limit(value: Any) -> None:
    text = values.dump(value)
    size = len(text.encode())
    for limit in (size // 3, size // 2, size - 1, size, 2 * size):
        assert jsontext.dump_within(value, limit) == (text if size <= limit else None), limit


def test_decode_keeps_integers_beyond_64_bits() -> None:
    assert jsontext.decode(b"[18446744073709551616, -9223372036854775809]") == [
        2**64,
        -(2**63) - 1,
    ]


@pytest.mark.parametrize("data", [b"[Infinity]", b"1e400", b'{"a": -1e999}'])
def test_decode_refuses_infinity_spelled_out_or_by_a_number_beyond_a_float(data: bytes) -> None:
    with pytest.raises(ValueError):
        jsontext.decode(data)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_load_of_stored_text_is_json_loads(value: Any) -> None:
    text = values.dump(value).encode()
    assert json.dumps(jsontext.load(text)) + repr(jsontext.load(text)) == json.dumps(
        json.loads(text)
    ) + repr(json.loads(text))


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_dump_checked_whole_makes_every_part_bare_orjson(value: Any) -> None:
    checked = jsontext.dump_checked(value)
    if checked is None:
        return
    assert checked.decode() == values.dump(value)
    parts = [value]
    while parts:
        part = parts.pop()
        assert orjson.dumps(part).decode() == values.dump(part)
        if type(part) is dict:
            parts.extend(part.values())
        elif type(part) is list:
            parts.extend(part)


@pytest.mark.parametrize("value", [[1.5e-7], {"a": [2**64]}, {"s": "\ud800"}, [[0.00001]]])
def test_dump_checked_refuses_a_whole_with_a_part_orjson_writes_otherwise(value: Any) -> None:
    assert jsontext.dump_checked(value) is None


def test_a_big_body_decodes_with_the_collector_held_off_and_leaves_it_on() -> None:
    body = json.dumps({f"k{i}": {"n": i} for i in range(20_000)}).encode()
    assert len(body) >= jsontext.HELD_OFF_FROM
    assert jsontext.decode(body) == json.loads(body)
    assert gc.isenabled()
