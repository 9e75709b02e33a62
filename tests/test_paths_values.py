"""Units for kvpio_mapping.paths and kvpio_mapping.values (no server needed)."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvpio_mapping import InvalidPathError, paths, values
from kvpio_mapping.paths import MISSING

# The contract's test vectors (kvpio-v1.md): data stored under "foo", path read, value.
VECTOR_LIST = [1, {"10": "Ten", "20": [46], "2": "two"}, 3]
VECTORS = [
    ("bar", "foo", "bar"),
    ({"bar": {"baz": 123}}, "foo/bar/baz", 123),
    (VECTOR_LIST, "foo/1", 1),
    (VECTOR_LIST, "foo/2/10", "Ten"),
    (VECTOR_LIST, "foo/2/20/1", 46),
]


# paths.parse / check


@pytest.mark.parametrize(
    ("key", "segments"),
    [
        ("a", ("a",)),
        ("a/b/c", ("a", "b", "c")),
        ("1/02", ("1", "02")),
        ("with space/?#%+", ("with space", "?#%+")),
        ("%2F", ("%2F",)),
        ("ünïcødé/日本", ("ünïcødé", "日本")),
        ("...", ("...",)),
        ("a.b/.c", ("a.b", ".c")),
    ],
)
def test_parse_splits_valid_paths_into_segments(key, segments):
    assert paths.parse(key) == segments


@pytest.mark.parametrize("key", [1, None, b"a", ("a",), 1.5])
def test_parse_refuses_a_non_str_key_with_type_error(key):
    with pytest.raises(TypeError):
        paths.parse(key)


@pytest.mark.parametrize(
    "key",
    ["", "a//b", "/a", "a/", "/", ".", "..", "a/./b", "a/../b", "a\x00b", "a/\x00"],
)
def test_parse_refuses_malformed_paths_with_invalid_path_error(key):
    with pytest.raises(InvalidPathError):
        paths.parse(key)


@pytest.mark.parametrize("key", ["\ud800", "a/b\udfff", "x" * 800 + "\ud800"])
def test_parse_refuses_a_key_that_is_not_valid_unicode(key):
    with pytest.raises(InvalidPathError):
        paths.parse(key)


def test_invalid_path_error_is_a_value_error():
    with pytest.raises(ValueError):
        paths.parse("a//b")


def test_parse_accepts_32_levels_and_refuses_33():
    assert len(paths.parse("/".join(["s"] * 32))) == 32
    with pytest.raises(InvalidPathError):
        paths.parse("/".join(["s"] * 33))


@pytest.mark.parametrize(("char", "width"), [("a", 1), ("é", 2), ("€", 3), ("😀", 4)])
def test_parse_limits_a_segment_to_768_utf8_bytes(char, width):
    at_limit = char * (768 // width)
    assert paths.parse(at_limit) == (at_limit,)
    over = at_limit + "a" * (769 - len(at_limit.encode()))
    assert len(over.encode()) == 769
    with pytest.raises(InvalidPathError):
        paths.parse(over)


def _one_segment(key: str) -> bool:
    try:
        return paths.parse(key) == (key,)
    except InvalidPathError:
        return False


@given(st.lists(st.text(st.sampled_from("a/.\x00é😀\ud800"), max_size=800), max_size=5))
def test_one_segment_each_says_yes_exactly_for_keys_parse_leaves_whole(keys):
    assert paths.one_segment_each(keys) == all(_one_segment(key) for key in keys)


def test_one_segment_each_of_plain_keys_and_of_each_kind_of_bad_one():
    plain = {f"key {n}/x".replace("/", ":"): n for n in range(100)} | {"ü": 1, "a" * 768: 2}
    assert paths.one_segment_each(plain)
    for bad in ("", ".", "..", "a/b", "a\x00", "\ud800", "a" * 769):
        assert not paths.one_segment_each({**plain, bad: 1}), bad


def test_check_refuses_a_segment_holding_a_slash():
    with pytest.raises(InvalidPathError):
        paths.check(("a/b",))


def test_check_refuses_empty_segments_tuple():
    with pytest.raises(InvalidPathError):
        paths.check(())


def test_join_is_the_inverse_of_parse():
    key = "a/ b/%2F/ü"
    assert paths.join(paths.parse(key)) == key


# paths.url_quote


@pytest.mark.parametrize(
    ("segments", "quoted"),
    [
        (("a", "b"), "a/b"),
        (("with space",), "with%20space"),
        (("?#%+&=",), "%3F%23%25%2B%26%3D"),
        (("%2F",), "%252F"),
        (("é",), "%C3%A9"),
        (("a:b@c",), "a%3Ab%40c"),
    ],
)
def test_url_quote_percent_encodes_each_segment_keeping_separators(segments, quoted):
    assert paths.url_quote(segments) == quoted


# paths.get_in


@pytest.mark.parametrize(("stored", "path", "expected"), VECTORS)
def test_get_in_follows_the_protocol_test_vectors(stored, path, expected):
    assert paths.get_in({"foo": stored}, paths.parse(path)) == expected


def test_get_in_treats_a_digit_segment_on_an_object_as_a_key():
    assert paths.get_in({"1": "one"}, ("1",)) == "one"
    assert paths.get_in({"a": "x"}, ("1",)) is MISSING


@pytest.mark.parametrize("segment", ["0", "4", "-1", "x", "\u0661"])
def test_get_in_is_missing_for_a_segment_that_is_not_a_position_of_the_list(segment):
    assert paths.get_in({"l": [1, 2, 3]}, ("l", segment)) is MISSING


@pytest.mark.parametrize("path", ["nothing", "foo/nothing", "foo/bar/baz/deeper", "s/x", "n/x"])
def test_get_in_is_missing_below_missing_or_scalar_values(path):
    data = {"foo": {"bar": {"baz": 123}}, "s": "text", "n": None}
    assert paths.get_in(data, paths.parse(path)) is MISSING


def test_get_in_returns_a_stored_null_not_missing():
    assert paths.get_in({"n": None}, ("n",)) is None


def test_missing_is_falsy_and_named():
    assert not MISSING
    assert repr(MISSING) == "MISSING"


# paths.set_in


def test_set_in_creates_missing_intermediate_objects():
    root: dict = {}
    paths.set_in(root, ("a", "b", "c"), 1)
    assert root == {"a": {"b": {"c": 1}}}


def test_set_in_replaces_a_scalar_parent_with_an_object():
    root: dict = {"a": 5}
    paths.set_in(root, ("a", "b"), 1)
    assert root == {"a": {"b": 1}}


def test_set_in_keeps_sibling_keys():
    root: dict = {"a": {"x": 1}}
    paths.set_in(root, ("a", "y"), 2)
    assert root == {"a": {"x": 1, "y": 2}}


def test_set_in_replaces_a_list_item_by_1_based_position():
    root: dict = {"l": [1, 2, 3]}
    paths.set_in(root, ("l", "1"), "first")
    assert root == {"l": ["first", 2, 3]}


def test_set_in_appends_at_position_n_plus_1():
    root: dict = {"l": [1, 2, 3]}
    paths.set_in(root, ("l", "4"), 4)
    assert root == {"l": [1, 2, 3, 4]}


def test_set_in_appends_an_object_for_a_deeper_write_at_n_plus_1():
    root: dict = {"l": [1]}
    paths.set_in(root, ("l", "2", "x"), 1)
    assert root == {"l": [1, {"x": 1}]}


def test_set_in_writes_into_an_object_inside_a_list():
    root: dict = {"foo": copy.deepcopy(VECTOR_LIST)}
    paths.set_in(root, ("foo", "2", "20", "1"), 47)
    assert root["foo"][1]["20"] == [47]


@pytest.mark.parametrize("path", ["l/0", "l/5", "l/x", "l/-1", "nested/1/9", "nested/1/x/y"])
def test_set_in_refuses_a_bad_list_position_and_leaves_data_unchanged(path):
    root: dict = {"l": [1, 2, 3], "nested": [[1]]}
    before = copy.deepcopy(root)
    with pytest.raises(InvalidPathError):
        paths.set_in(root, paths.parse(path), "v")
    assert root == before


def test_set_in_stores_the_given_object_itself():
    root: dict = {}
    value = {"k": [1]}
    paths.set_in(root, ("a",), value)
    assert root["a"] is value


# paths.delete_in


def test_delete_in_removes_a_key_and_everything_below():
    root: dict = {"a": {"b": {"c": 1}}, "x": 1}
    assert paths.delete_in(root, ("a",)) is True
    assert root == {"x": 1}


def test_delete_in_removes_a_nested_key_only():
    root: dict = {"a": {"b": 1, "c": 2}}
    assert paths.delete_in(root, ("a", "b")) is True
    assert root == {"a": {"c": 2}}


def test_delete_in_moves_later_list_items_up():
    root: dict = {"l": [1, 2, 3]}
    assert paths.delete_in(root, ("l", "2")) is True
    assert root == {"l": [1, 3]}


@pytest.mark.parametrize("path", ["nothing", "a/nothing", "s/x", "l/0", "l/4", "l/x", "a/b/c"])
def test_delete_in_of_a_missing_path_returns_false_and_changes_nothing(path):
    root: dict = {"a": {"b": 1}, "s": "text", "l": [1, 2, 3]}
    before = copy.deepcopy(root)
    assert paths.delete_in(root, paths.parse(path)) is False
    assert root == before


def test_delete_in_after_deleting_foo_nothing_below_is_found():
    root: dict = {"foo": copy.deepcopy(VECTOR_LIST)}
    paths.delete_in(root, ("foo",))
    assert paths.get_in(root, ("foo",)) is MISSING
    assert paths.get_in(root, ("foo", "2", "20", "1")) is MISSING


# paths.position


@pytest.mark.parametrize(
    ("segment", "length", "index"),
    [("1", 3, 0), ("3", 3, 2), ("4", 3, None), ("0", 3, None), ("x", 3, None), ("²", 3, None)],
)
def test_position_maps_1_based_ascii_digits_to_an_index(segment, length, index):
    assert paths.position(segment, length) == index


# values.check


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**100,
        1.5,
        "",
        "text",
        [],
        {},
        [1, "a", None],
        {"a": {"b": [1]}},
        (1, 2),
    ],
)
def test_check_accepts_json_values(value):
    values.check(value)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), [float("nan")], {"a": {"b": float("inf")}}]
)
def test_check_refuses_non_finite_floats_with_value_error(value):
    with pytest.raises(ValueError):
        values.check(value)


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {"a": {2: "b"}}, {None: 1}, {("a",): 1}, {1.5: 1}, {True: 1}],
)
def test_check_refuses_objects_with_non_str_keys_with_type_error(value):
    with pytest.raises(TypeError):
        values.check(value)


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), b"bytes", bytearray(b"x"), [object()], {"a": frozenset()}, 1j]
)
def test_check_refuses_non_json_types_with_type_error(value):
    with pytest.raises(TypeError):
        values.check(value)


def nested_lists(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_check_accepts_100_levels_of_nesting_and_refuses_101():
    values.check(nested_lists(100))
    with pytest.raises(ValueError):
        values.check(nested_lists(101))


# values.encode / decode


def test_encode_is_compact_utf8_json():
    assert values.encode({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()


def test_encode_refuses_what_check_refuses():
    with pytest.raises(ValueError):
        values.encode(float("nan"))
    with pytest.raises(TypeError):
        values.encode({1: "a"})


def test_encode_turns_tuples_into_arrays_that_decode_as_lists():
    assert values.decode(values.encode((1, (2, 3)))) == [1, [2, 3]]


def test_big_ints_round_trip_exactly():
    big = 2**200 + 1
    assert values.decode(values.encode(big)) == big
    assert values.decode(values.encode(-big)) == -big


def test_floats_round_trip_exactly():
    for number in (0.1, 1e300, -2.5e-300, 1.0):
        decoded = values.decode(values.encode(number))
        assert decoded == number
        assert type(decoded) is float


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity", "[NaN]", '{"a": Infinity}', "1e400", '{"a": [-1e999]}']
)
def test_decode_refuses_non_finite_numbers(text):
    with pytest.raises(ValueError):
        values.decode(text)


@pytest.mark.parametrize("text", ["", "{", "nul", "[1,]", "{'a': 1}"])
def test_decode_refuses_invalid_json_with_value_error(text):
    with pytest.raises(ValueError):
        values.decode(text)


@pytest.mark.parametrize(
    "text", ['"\\ud800"', '["x\\uDBFF"]', '{"\\udc00": 1}', '"\\ude00\\ud83d"']
)
def test_decode_refuses_lone_surrogates_no_utf8_can_hold(text):
    with pytest.raises(ValueError, match=r"^\\u[0-9a-f]{4} is a lone surrogate, not a character$"):
        values.decode(text)


@pytest.mark.parametrize("value", ["\ud800", ["a", {"k": "x\udfff"}], {"k\udc00": 1}])
def test_check_and_encode_refuse_lone_surrogates_in_their_own_words(value):
    for refuse in (values.check, values.encode):
        with pytest.raises(ValueError, match=r"^\\u[0-9a-f]{4} is a lone surrogate, not a char"):
            refuse(value)


def test_decode_keeps_surrogate_pairs_and_escaped_backslashes():
    assert values.decode('["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]


def test_decode_refuses_a_long_integer_in_its_own_words():
    with pytest.raises(ValueError, match=r"^an integer has more than \d+ digits$"):
        values.decode("9" * 5000)


def test_decode_refuses_invalid_utf8_with_value_error():
    with pytest.raises(ValueError):
        values.decode(b'"\xff"')


def test_decode_accepts_100_levels_and_refuses_101():
    assert values.decode(json.dumps(nested_lists(100))) == nested_lists(100)
    with pytest.raises(ValueError):
        values.decode(json.dumps(nested_lists(101)))
    with pytest.raises(ValueError):
        values.decode(json.dumps({"a": nested_lists(100)}))


def test_decode_takes_a_higher_nesting_limit_for_reads():
    text = json.dumps(nested_lists(132))
    assert values.decode(text, 132) == nested_lists(132)
    with pytest.raises(ValueError):
        values.decode(text, 131)


def test_decode_refuses_nesting_that_would_exhaust_recursion():
    with pytest.raises(ValueError):
        values.decode("[" * 100_000 + "]" * 100_000)


def test_decode_accepts_bytes_and_str():
    assert values.decode(b'{"a":"\xc3\xa9"}') == {"a": "é"}
    assert values.decode('"x"') == "x"


# values.copy


def test_copy_is_deep_and_equal():
    original = {"a": [1, {"b": [2]}], "c": "s"}
    duplicate = values.copy(original)
    assert duplicate == original
    duplicate["a"][1]["b"].append(3)
    duplicate["c"] = "t"
    assert original == {"a": [1, {"b": [2]}], "c": "s"}
