"""KVBucket behaves as a ``dict``: each operation runs on a bucket (against the real
server of the ``kvpio_server`` fixture) and on a plain ``dict`` side by side, and
both must give the same result, raise the same exception type and end equal."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
import types
from collections import OrderedDict
from typing import Any

import pytest

from kvpio_mapping import (
    AuthenticationError,
    InvalidPathError,
    KVBucket,
    RequestError,
    TransportError,
    connect,
)
from kvpio_mapping.paths import delete_in, get_in, parse, set_in
from kvpio_mapping.transport import Transport


@pytest.fixture
def bucket(kvpio_account):
    return KVBucket(kvpio_account.url, kvpio_account.api_key)


@pytest.fixture
def other(kvpio_account):
    """Another, uncached client of the same account: what the server holds."""
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


@pytest.fixture
def sent(bucket, count_requests):
    return count_requests(bucket)


INITIAL = {"a": 1, "b": {"c": [1, 2]}, "n": None, "s": "text"}


@pytest.fixture
def pair(bucket):
    """A bucket and a dict holding the same data, inserted in the same order."""
    model: dict[str, Any] = {}
    for key, value in INITIAL.items():
        bucket[key] = value
        model[key] = value
    return bucket, model


def outcome(call, target):
    try:
        return "returned", call(target)
    except Exception as exc:
        return "raised", type(exc)


def same(pair, call):
    """Run ``call`` on the bucket and on the dict: same result (or exception type), same data."""
    bucket, model = pair
    got = outcome(call, bucket)
    expected = outcome(call, model)
    assert got == expected
    assert dict(bucket) == model
    assert list(bucket) == list(model)
    return got[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# item access


def test_getitem_of_a_present_key(pair):
    same(pair, lambda m: m["b"])


def test_getitem_of_a_missing_key_raises_key_error(pair):
    same(pair, lambda m: m["missing"])


def test_setitem_adds_a_key(pair):
    same(pair, lambda m: m.__setitem__("new", {"x": [1, "y"]}))


def test_setitem_replaces_a_value_and_keeps_the_keys_position(pair):
    same(pair, lambda m: m.__setitem__("a", "replaced"))


def test_delitem_removes_a_key(pair):
    same(pair, lambda m: m.__delitem__("b"))


def test_delitem_of_a_missing_key_raises_key_error(pair):
    same(pair, lambda m: m.__delitem__("missing"))


def test_a_deleted_key_set_again_moves_to_the_end(pair):
    def call(m):
        del m["a"]
        m["a"] = 2

    same(pair, call)


@pytest.mark.parametrize("value", [None, False, 0, 0.0, "", [], {}])
def test_falsy_values_are_present_and_read_back(pair, value):
    same(pair, lambda m: m.__setitem__("f", value))
    same(pair, lambda m: ("f" in m, m["f"], m.get("f", "default")))


def test_contains(pair):
    same(pair, lambda m: ("a" in m, "n" in m, "missing" in m, "missing" not in m))


def test_len(pair):
    same(pair, len)


def test_len_of_an_empty_bucket_is_zero(bucket):
    assert len(bucket) == 0


def test_iter_gives_keys_in_insertion_order(pair):
    same(pair, list)


def test_reversed_gives_keys_in_reverse_insertion_order(pair):
    same(pair, lambda m: list(reversed(m)))


# views


def test_keys_view(pair):
    same(pair, lambda m: (list(m.keys()), len(m.keys()), "a" in m.keys(), "x" in m.keys()))  # noqa: SIM118


def test_keys_view_compares_and_combines_as_a_set(pair):
    same(pair, lambda m: (m.keys() == set(INITIAL), m.keys() & {"a", "x"}, m.keys() | {"x"}))


def test_values_view(pair):
    same(pair, lambda m: (list(m.values()), len(m.values()), 1 in m.values(), 99 in m.values()))


def test_items_view(pair):
    same(
        pair,
        lambda m: (
            list(m.items()),
            len(m.items()),
            ("a", 1) in m.items(),
            ("a", 2) in m.items(),
            ("b", {"c": [1, 2]}) in m.items(),
            ("x", None) in m.items(),
            ("n", None) in m.items(),
        ),
    )


def test_views_are_live(pair):
    def call(m):
        keys, values, items = m.keys(), m.values(), m.items()
        m["late"] = "added"
        return list(keys), list(values), list(items)

    same(pair, call)


@pytest.mark.parametrize("view", ["keys", "values", "items"])
@pytest.mark.parametrize("use", ["for", "in", "reversed", "break"])
def test_a_views_len_counts_a_write_made_after_it_was_used(pair, view, use):
    def call(m):
        seen = getattr(m, view)()
        if use == "for":
            for _ in seen:
                pass
        elif use == "in":
            ("a", 1) in seen  # noqa: B015
        elif use == "reversed":
            list(reversed(seen))
        else:
            for _ in seen:
                m["late"] = "added"
                return len(seen)
        m["late"] = "added"
        return len(seen)

    same(pair, call)


@pytest.mark.parametrize("view", ["keys", "values", "items"])
def test_views_are_reversible(pair, view):
    same(pair, lambda m: list(reversed(getattr(m, view)())))


def test_items_view_equals_the_dicts_items_view(pair):
    bucket, model = pair
    assert bucket.items() == model.items()
    assert bucket.keys() == model.keys()


# get, pop, popitem, setdefault


def test_get(pair):
    same(pair, lambda m: (m.get("a"), m.get("missing"), m.get("missing", 5), m.get("n", 5)))


def test_pop_of_a_present_key_returns_and_removes_it(pair):
    same(pair, lambda m: m.pop("b"))


def test_pop_of_a_missing_key_without_default_raises_key_error(pair):
    same(pair, lambda m: m.pop("missing"))


def test_pop_of_a_missing_key_with_default_returns_it(pair):
    same(pair, lambda m: m.pop("missing", "default"))


def test_pop_of_a_present_key_ignores_the_default(pair):
    same(pair, lambda m: m.pop("a", "default"))


def test_popitem_removes_the_last_inserted_pair(pair):
    same(pair, lambda m: [m.popitem() for _ in range(2)])


def test_popitem_follows_insertion_order_after_a_replace_and_a_reinsert(pair):
    def call(m):
        m["a"] = "replaced"
        del m["b"]
        m["b"] = "again"
        return [m.popitem() for _ in range(len(INITIAL))]

    same(pair, call)


def test_popitem_of_an_empty_bucket_raises_dicts_key_error(bucket):
    with pytest.raises(KeyError) as ours:
        bucket.popitem()
    with pytest.raises(KeyError) as dicts:
        {}.popitem()
    assert ours.value.args == dicts.value.args


SET_OPERATIONS = {
    "and": lambda v: v & {("a", 1)},
    "rand": lambda v: {("a", 1)} & v,
    "or": lambda v: v | {("z", 0)},
    "ror": lambda v: {("z", 0)} | v,
    "sub": lambda v: v - {("a", 1)},
    "rsub": lambda v: {("a", 1)} - v,
    "xor": lambda v: v ^ {("a", 1)},
    "rxor": lambda v: {("a", 1)} ^ v,
    "and list": lambda v: v & [("a", 1)],
    "isdisjoint": lambda v: v.isdisjoint([("b", {"c": [1, 2]})]),
}


@pytest.mark.parametrize("operation", SET_OPERATIONS.values(), ids=SET_OPERATIONS.keys())
def test_items_set_operations_answer_as_dicts_do(pair, operation):
    """An unhashable value in the bucket makes them raise TypeError, as for dict."""
    same(pair, lambda m: operation(m.items()))
    bucket, model = pair
    del bucket["b"], model["b"]
    same(pair, lambda m: operation(m.items()))


def test_setdefault_of_a_present_key_returns_its_value(pair):
    same(pair, lambda m: m.setdefault("a", "default"))


def test_setdefault_of_a_missing_key_stores_and_returns_the_default(pair):
    same(pair, lambda m: m.setdefault("new", {"d": 1}))


def test_setdefault_without_a_default_stores_none(pair):
    same(pair, lambda m: (m.setdefault("new"), "new" in m, m["new"]))


def test_setdefault_of_a_key_holding_none_keeps_it(pair):
    same(pair, lambda m: m.setdefault("n", "default"))


def test_setdefault_never_overwrites_a_value_another_client_set_meanwhile(bucket, other):
    transport = bucket._transport
    send = transport.request

    def request(method, target, **kwargs):
        if method == "POST":
            other["k"] = "theirs"  # lands between the bucket's read and its write
        return send(method, target, **kwargs)

    transport.request = request
    assert bucket.setdefault("k", "mine") == "theirs"
    assert other["k"] == "theirs"
    assert bucket["k"] == "theirs"


# update


def test_update_from_a_mapping(pair):
    same(pair, lambda m: m.update({"a": 10, "new": [1]}))


def test_update_from_an_ordered_mapping_keeps_its_order(pair):
    same(pair, lambda m: m.update(OrderedDict([("z", 1), ("y", 2), ("x", 3)])))


def test_update_from_an_object_with_keys_and_getitem(pair):
    class KeysOnly:
        def keys(self):
            return ["k1", "k2"]

        def __getitem__(self, key):
            return key.upper()

    same(pair, lambda m: m.update(KeysOnly()))


def test_update_from_an_iterable_of_pairs(pair):
    same(pair, lambda m: m.update([("p", 1), ["q", 2], "rs", ("a", "new a")]))


def test_update_from_a_generator_of_pairs(pair):
    same(pair, lambda m: m.update((f"g{i}", i) for i in range(3)))


def test_update_from_keywords(pair):
    same(pair, lambda m: m.update(a=5, kw="x"))


def test_update_from_a_mapping_and_keywords_keywords_win(pair):
    same(pair, lambda m: m.update({"a": 1, "both": "positional"}, both="keyword"))


def test_update_with_a_repeated_key_keeps_the_last_value(pair):
    same(pair, lambda m: m.update([("r", 1), ("other", 2), ("r", 3)]))


def test_update_with_nothing_sends_nothing(bucket, sent):
    bucket.update()
    bucket.update({})
    bucket.update([])
    assert sent.count == 0


def test_update_from_another_bucket(pair, kvpio_server):
    from kvpio_mapping.testing import new_account

    account = new_account(kvpio_server)
    source = KVBucket(account.url, account.api_key)
    source.update({"from": "elsewhere", "a": [1]})
    same(pair, lambda m: m.update(source))


@pytest.mark.parametrize(
    "argument", [[("a", 1, 2)], [("a",)], ["abc"], [()]], ids=["3", "1", "str3", "0"]
)
def test_update_with_a_pair_of_wrong_length_raises_value_error_and_sends_nothing(
    bucket, sent, argument
):
    bucket["keep"] = 1
    sent.reset()
    with pytest.raises(ValueError):
        {}.update([("first", 1), *argument])
    with pytest.raises(ValueError):
        bucket.update([("first", 1), *argument])
    assert sent.count == 0
    assert dict(bucket) == {"keep": 1}


@pytest.mark.parametrize("argument", [5, None, 1.5, [1], [None], [("ok", 1), 7]])
def test_update_with_a_non_iterable_raises_type_error_and_sends_nothing(bucket, sent, argument):
    with pytest.raises(TypeError):
        {}.update(argument)
    with pytest.raises(TypeError):
        bucket.update(argument)
    assert sent.count == 0


@pytest.mark.parametrize("bad", ["", "a//b", "/a", 1, None])
def test_update_with_one_invalid_key_sends_nothing(bucket, sent, bad):
    with pytest.raises((TypeError, ValueError)):
        bucket.update([("good", 1), (bad, 2)])
    assert sent.count == 0
    assert "good" not in bucket


def test_update_with_one_invalid_value_sends_nothing(bucket, sent):
    with pytest.raises(TypeError):
        bucket.update({"good": 1, "bad": {1, 2}})
    assert sent.count == 0
    assert "good" not in bucket


# clear, comparison, bool, repr, |, |=, copy, dict()


def test_clear_empties_the_bucket(pair):
    same(pair, lambda m: (m.clear(), len(m)))


def test_clear_of_an_empty_bucket(bucket):
    bucket.clear()
    assert dict(bucket) == {}


def test_equals_a_dict_with_the_same_items_in_any_order(pair):
    bucket, model = pair
    reordered = dict(reversed(list(model.items())))
    assert bucket == model
    assert bucket == reordered
    assert model == bucket
    assert (bucket != model) is False


def test_equals_other_mappings(pair):
    bucket, model = pair
    assert bucket == types.MappingProxyType(model)
    assert bucket == OrderedDict(model)


def test_differs_from_a_dict_with_other_items(pair):
    bucket, model = pair
    assert bucket != {**model, "a": 2}
    assert bucket != {**model, "extra": 1}
    assert bucket != {}
    assert (bucket == {**model, "a": 2}) is False


def test_is_not_equal_to_non_mappings(pair):
    bucket, model = pair
    assert bucket != list(model.items())
    assert bucket != 1


def test_equals_another_bucket_with_the_same_items(pair, kvpio_server):
    from kvpio_mapping.testing import new_account

    bucket, model = pair
    account = new_account(kvpio_server)
    twin = KVBucket(account.url, account.api_key)
    twin.update(model)
    assert bucket == twin


def test_is_unhashable_like_a_dict(pair):
    same(pair, hash)


def test_bool_is_false_only_when_empty(pair):
    same(pair, bool)
    same(pair, lambda m: (m.clear(), bool(m)))


def test_repr_shows_neither_the_content_nor_the_api_key(bucket, kvpio_account):
    bucket["secret"] = "s3cr3t-value"
    text = repr(bucket)
    assert "s3cr3t-value" not in text
    assert "secret" not in text
    assert kvpio_account.api_key not in text
    assert kvpio_account.url in text


def test_or_with_a_dict_gives_a_dict(pair):
    bucket, model = pair
    merged = bucket | {"a": "other", "x": 1}
    assert type(merged) is dict
    assert merged == model | {"a": "other", "x": 1}
    assert list(merged) == list(model | {"a": "other", "x": 1})
    assert dict(bucket) == model


def test_dict_or_bucket_gives_a_dict(pair):
    bucket, model = pair
    merged = {"a": "mine", "x": 1} | bucket
    assert type(merged) is dict
    assert merged == {"a": "mine", "x": 1} | model
    assert list(merged) == list({"a": "mine", "x": 1} | model)


@pytest.mark.parametrize("operand", [[("a", 1)], 1, None])
def test_or_with_a_non_mapping_raises_type_error(pair, operand):
    same(pair, lambda m: m | operand)
    same(pair, lambda m: operand | m)


def test_ior_updates_in_place_from_a_mapping(pair):
    def call(m):
        before = m
        m |= {"a": "ior", "new": 1}
        return m is before

    same(pair, call)


def test_ior_accepts_an_iterable_of_pairs(pair):
    def call(m):
        m |= [("p", 1)]

    same(pair, call)


def test_ior_with_a_non_iterable_raises_type_error(pair):
    def call(m):
        m |= 5

    same(pair, call)


def test_copy_is_an_independent_dict(pair):
    bucket, model = pair
    duplicate = bucket.copy()
    assert type(duplicate) is dict
    assert duplicate == model
    assert list(duplicate) == list(model)
    duplicate["b"]["c"].append(3)
    duplicate["a"] = "changed"
    assert dict(bucket) == model


def test_dict_of_a_bucket_is_its_whole_nested_content(pair):
    bucket, model = pair
    assert dict(bucket) == model
    assert list(dict(bucket)) == list(model)


WRONG_ARGUMENTS = {
    "get()": lambda m: m.get(),
    "get(k, d, x)": lambda m: m.get("a", 1, 2),
    "pop()": lambda m: m.pop(),
    "pop(k, d, x)": lambda m: m.pop("a", 1, 2),
    "popitem(k)": lambda m: m.popitem("a"),
    "setdefault()": lambda m: m.setdefault(),
    "setdefault(k, d, x)": lambda m: m.setdefault("a", 1, 2),
    "update(m, m)": lambda m: m.update({}, {}),
    "clear(x)": lambda m: m.clear(1),
    "keys(x)": lambda m: m.keys(1),
    "values(x)": lambda m: m.values(1),
    "items(x)": lambda m: m.items(1),
    "copy(x)": lambda m: m.copy(1),
    "getitem()": lambda m: m.__getitem__(),
    "setitem(k)": lambda m: m.__setitem__("a"),
    "delitem()": lambda m: m.__delitem__(),
    "contains()": lambda m: m.__contains__(),
}


@pytest.mark.parametrize("call", WRONG_ARGUMENTS.values(), ids=WRONG_ARGUMENTS.keys())
def test_a_wrong_number_of_arguments_raises_type_error(pair, call):
    assert same(pair, call) is TypeError


# nested slash paths

VECTOR_LIST = [1, {"10": "Ten", "20": [46], "2": "two"}, 3]


@pytest.mark.parametrize(
    ("stored", "path", "expected"),
    [
        ("bar", "foo", "bar"),
        ({"bar": {"baz": 123}}, "foo/bar/baz", 123),
        (VECTOR_LIST, "foo/1", 1),
        (VECTOR_LIST, "foo/2/10", "Ten"),
        (VECTOR_LIST, "foo/2/20/1", 46),
    ],
)
def test_nested_reads_follow_keys_and_1_based_positions(bucket, stored, path, expected):
    bucket["foo"] = stored
    assert bucket[path] == expected
    assert path in bucket
    assert bucket.get(path) == expected


@pytest.mark.parametrize("path", ["foo/0", "foo/4", "foo/2/1", "foo/1/x", "foo/2/20/2", "bar/x"])
def test_nested_reads_of_missing_paths_raise_key_error(bucket, path):
    bucket["foo"] = VECTOR_LIST
    with pytest.raises(KeyError):
        bucket[path]
    assert path not in bucket
    assert bucket.get(path, "default") == "default"


def test_after_deleting_foo_nothing_below_it_is_found(bucket):
    bucket["foo"] = VECTOR_LIST
    del bucket["foo"]
    assert "foo" not in bucket
    assert "foo/2/20/1" not in bucket


def nested_same(bucket: KVBucket, model: dict[str, Any], key: str, value: Any) -> None:
    bucket[key] = value
    set_in(model, parse(key), value)
    assert dict(bucket) == model


def test_a_nested_write_creates_missing_intermediate_objects(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "x/y/z", 1)
    assert bucket["x"] == {"y": {"z": 1}}


def test_a_nested_write_below_a_scalar_replaces_it_with_an_object(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "x", "scalar")
    nested_same(bucket, model, "x/y", 1)
    assert bucket["x"] == {"y": 1}


def test_a_nested_write_keeps_siblings(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "x", {"keep": 1})
    nested_same(bucket, model, "x/add", 2)
    assert bucket["x"] == {"keep": 1, "add": 2}


def test_a_write_at_a_list_position_replaces_the_item(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "l", [1, 2, 3])
    nested_same(bucket, model, "l/2", "two")
    assert bucket["l"] == [1, "two", 3]


def test_a_write_at_position_n_plus_1_appends(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "l", [1, 2, 3])
    nested_same(bucket, model, "l/4", 4)
    assert bucket["l"] == [1, 2, 3, 4]


@pytest.mark.parametrize("path", ["l/0", "l/5", "l/x"])
def test_a_write_at_an_invalid_list_position_raises_value_error_and_changes_nothing(bucket, path):
    bucket["l"] = [1, 2, 3]
    with pytest.raises(ValueError) as raised:
        bucket[path] = "bad"
    assert isinstance(raised.value, RequestError)
    assert bucket["l"] == [1, 2, 3]


def test_a_nested_delete_removes_the_subtree_only(bucket):
    model: dict[str, Any] = {}
    nested_same(bucket, model, "x", {"y": {"z": 1}, "keep": 2})
    del bucket["x/y"]
    delete_in(model, ("x", "y"))
    assert dict(bucket) == model
    assert "x/y/z" not in bucket
    assert "x/keep" in bucket


def test_deleting_a_list_item_moves_later_items_up(bucket):
    bucket["l"] = ["a", "b", "c"]
    assert bucket["l/3"] == "c"
    del bucket["l/2"]
    assert bucket["l"] == ["a", "c"]
    assert bucket["l/2"] == "c"
    assert "l/3" not in bucket


def test_a_nested_delete_of_a_missing_path_raises_key_error(bucket):
    bucket["x"] = {"y": 1}
    with pytest.raises(KeyError):
        del bucket["x/nothing"]
    with pytest.raises(KeyError):
        del bucket["x/y/deeper"]
    assert bucket["x"] == {"y": 1}


def test_nested_pop_returns_the_subtree(bucket):
    bucket["x"] = {"y": {"z": 1}}
    assert bucket.pop("x/y") == {"z": 1}
    assert bucket.pop("x/y", "gone") == "gone"
    assert bucket["x"] == {}


def test_nested_setdefault(bucket):
    assert bucket.setdefault("x/y", 1) == 1
    assert bucket.setdefault("x/y", 2) == 1
    assert bucket["x"] == {"y": 1}


def test_iteration_len_and_keys_are_over_top_level_keys(bucket):
    bucket["x/y/z"] = 1
    bucket["x/w"] = 2
    bucket["t"] = 3
    assert list(bucket) == ["x", "t"]
    assert len(bucket) == 2
    assert list(bucket.keys()) == ["x", "t"]
    assert dict(bucket) == {"x": {"y": {"z": 1}, "w": 2}, "t": 3}


def test_a_digit_key_on_an_object_is_a_key_not_a_position(bucket):
    bucket["o"] = {"1": "one", "2": "two"}
    assert bucket["o/2"] == "two"
    bucket["o/3"] = "three"
    assert bucket["o"] == {"1": "one", "2": "two", "3": "three"}


# keys with special characters

SPECIAL_KEYS = [
    "with space",
    " leading and trailing ",
    "question?mark",
    "hash#tag",
    "per%cent",
    "%",
    "%zz",
    "plus+sign",
    "%2F",
    "a%2Fb",
    "%252F",
    "amp&eq=1",
    "semi;colon",
    "quote'\"",
    "back\\slash",
    "tilde~",
    "ünïcødé",
    "日本語",
    "emoji😀",
    "tab\tnew\nline",
    "...x",
    "1",
]


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_keys_with_special_characters_round_trip(bucket, other, key):
    bucket[key] = key
    assert bucket[key] == key
    assert key in bucket
    assert other[key] == key
    assert list(other) == [key]
    assert dict(other) == {key: key}


@pytest.mark.parametrize("key", SPECIAL_KEYS)
def test_special_characters_round_trip_in_nested_paths(bucket, other, key):
    bucket[f"{key}/{key}"] = 1
    assert other[key] == {key: 1}
    assert other[f"{key}/{key}"] == 1
    assert list(bucket.view(key)) == [key]


def test_a_percent_encoded_slash_in_a_key_is_not_a_separator(bucket, other):
    bucket["a%2Fb"] = 1
    assert "a" not in other
    assert list(other) == ["a%2Fb"]


# keys that can never exist: reads answer as dict does for an absent key, writes refuse

NON_STR_KEYS = [1, None, b"a", ("a",), 1.5, object()]
INVALID_PATHS = [
    "",
    "a//b",
    "/a",
    "a/",
    ".",
    "..",
    "a/./b",
    "a/../b",
    "/".join(["s"] * 33),
    "x" * 769,
    "lone\ud800surrogate",
]

READ_OPERATIONS = {
    "getitem": lambda b, k: b[k],
    "delitem": lambda b, k: b.__delitem__(k),
    "contains": lambda b, k: k in b,
    "in keys": lambda b, k: k in b.keys(),  # noqa: SIM118
    "in items": lambda b, k: (k, 1) in b.items(),
    "get": lambda b, k: b.get(k),
    "get default": lambda b, k: b.get(k, "dflt"),
    "pop": lambda b, k: b.pop(k),
    "pop default": lambda b, k: b.pop(k, "dflt"),
}
WRITE_OPERATIONS = {
    "setitem": lambda b, k: b.__setitem__(k, 1),
    "setdefault": lambda b, k: b.setdefault(k, 1),
    "update": lambda b, k: b.update([(k, 1)]),
    "view": lambda b, k: b.view(k),
}


def answer(operation, mapping, key):
    """What ``operation`` returns or raises (its type and args) on ``mapping``."""
    try:
        return "returned", operation(mapping, key)
    except Exception as exc:
        return type(exc), exc.args


@pytest.mark.parametrize("operation", READ_OPERATIONS.values(), ids=READ_OPERATIONS.keys())
@pytest.mark.parametrize("key", NON_STR_KEYS + INVALID_PATHS, ids=lambda key: repr(key)[:14])
def test_a_read_of_a_key_that_can_never_exist_answers_as_dict_does_and_sends_nothing(
    bucket, sent, operation, key
):
    assert answer(operation, bucket, key) == answer(operation, {}, key)
    assert sent.count == 0


@pytest.mark.parametrize("operation", READ_OPERATIONS.values(), ids=READ_OPERATIONS.keys())
def test_a_read_of_an_unhashable_key_raises_type_error_as_dict_does(bucket, sent, operation):
    with pytest.raises(TypeError, match="unhashable"):
        operation(bucket, ["a"])
    assert sent.count == 0


@pytest.mark.parametrize("operation", WRITE_OPERATIONS.values(), ids=WRITE_OPERATIONS.keys())
@pytest.mark.parametrize("key", NON_STR_KEYS, ids=repr)
def test_a_write_with_a_non_str_key_raises_type_error_and_sends_nothing(
    bucket, sent, operation, key
):
    with pytest.raises(TypeError):
        operation(bucket, key)
    assert sent.count == 0


@pytest.mark.parametrize("operation", WRITE_OPERATIONS.values(), ids=WRITE_OPERATIONS.keys())
@pytest.mark.parametrize("key", INVALID_PATHS, ids=lambda key: repr(key[:12]))
def test_a_write_with_an_invalid_path_raises_invalid_path_error_and_sends_nothing(
    bucket, sent, operation, key
):
    with pytest.raises(InvalidPathError) as raised:
        operation(bucket, key)
    assert isinstance(raised.value, ValueError)
    assert not isinstance(raised.value, KeyError)
    assert sent.count == 0


def test_a_path_that_is_too_deep_only_below_a_view_is_refused(bucket, sent):
    view = bucket.view("/".join(["v"] * 30))
    sent.reset()
    view["a/b"] = 1
    with pytest.raises(InvalidPathError):
        view["a/b/c"] = 1
    assert sent.count == 1


# values


NON_JSON = [
    {1, 2},
    object(),
    float("nan"),
    float("inf"),
    -float("inf"),
    {1: "a"},
    b"bytes",
    [1, {2}],
    {"a": {"b": float("nan")}},
    1j,
    "lone \ud800 surrogate",
    {"a": ["x\udfff"]},
]


@pytest.mark.parametrize("value", NON_JSON, ids=repr)
def test_a_non_json_value_raises_and_sends_nothing_and_keeps_the_cache(bucket, sent, value):
    bucket["k"] = "old"
    assert bucket["k"] == "old"
    sent.reset()
    with pytest.raises((TypeError, ValueError)) as raised:
        bucket["k"] = value
    assert not isinstance(raised.value, KeyError)
    with pytest.raises((TypeError, ValueError)):
        bucket.update({"k": value})
    with pytest.raises((TypeError, ValueError)):
        bucket.update(k=value)
    assert bucket["k"] == "old"
    assert sent.count == 0


@pytest.mark.parametrize("value", NON_JSON, ids=repr)
def test_setdefault_with_a_non_json_default_writes_nothing(bucket, sent, value):
    with pytest.raises((TypeError, ValueError)):
        bucket.setdefault("k", value)
    assert [method for method, _ in sent.sent if method != "GET"] == []
    assert "k" not in bucket


def nested_lists(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_a_value_nested_101_levels_is_refused_before_sending(bucket, sent):
    with pytest.raises(ValueError):
        bucket["k"] = nested_lists(101)
    assert sent.count == 0


def test_a_value_nested_100_levels_reads_back_alone_and_inside_the_whole_bucket(bucket, other):
    deep = nested_lists(100)
    bucket["k"] = deep
    assert other["k"] == deep
    assert bucket.copy() == {"k": deep}
    assert list(other.values()) == [deep]


DEEPEST_PATH = "/".join(["p"] * 32)


def test_a_deep_value_at_the_deepest_path_reads_back_through_its_ancestors(bucket, other):
    deep = nested_lists(100)
    bucket[DEEPEST_PATH] = deep
    assert other[DEEPEST_PATH] == deep
    assert get_in(other["p"], tuple(["p"] * 31)) == deep
    assert get_in(bucket["p/p"], tuple(["p"] * 30)) == deep


def test_a_deep_value_at_the_deepest_path_reads_back_inside_the_whole_bucket(bucket):
    deep = nested_lists(100)
    bucket[DEEPEST_PATH] = deep
    assert get_in(bucket.copy(), tuple(["p"] * 32)) == deep


def test_tuples_come_back_as_lists(bucket, other):
    bucket["t"] = (1, (2, 3), {"in": ()})
    assert bucket["t"] == [1, [2, 3], {"in": []}]
    assert other["t"] == [1, [2, 3], {"in": []}]


def test_big_ints_and_floats_round_trip(bucket, other):
    value = {"big": 2**100, "neg": -(2**70), "f": 0.1, "e": 1e300, "bool": True}
    bucket["n"] = value
    assert other["n"] == value
    assert type(other["n/bool"]) is bool


def test_a_value_mutated_after_it_was_written_is_not_changed_in_the_bucket(bucket):
    value = {"a": [1]}
    bucket["k"] = value
    value["a"].append(2)
    assert bucket["k"] == {"a": [1]}


# copy on read

READS = {
    "getitem": lambda b: b["d"],
    "get": lambda b: b.get("d"),
    "nested": lambda b: b["d/list"],
    "values": lambda b: next(iter(b.values())),
    "items": lambda b: next(iter(b.items()))[1],
    "copy": lambda b: b.copy()["d"],
    "dict": lambda b: dict(b)["d"],
    "setdefault": lambda b: b.setdefault("d", None),
    "view": lambda b: b.view("d")["list"],
    "view values": lambda b: dict(b.view("d").items())["list"],
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_mutating_a_returned_value_changes_neither_cache_nor_server(bucket, other, read):
    bucket["d"] = {"list": [1, 2], "obj": {"x": 1}}
    bucket["d"]
    returned = read(bucket)
    if isinstance(returned, dict):
        returned["list"].append("local")
        returned["new"] = "local"
    else:
        returned.append("local")
    assert bucket["d"] == {"list": [1, 2], "obj": {"x": 1}}
    assert bucket["d/list"] == [1, 2]
    assert other["d"] == {"list": [1, 2], "obj": {"x": 1}}


# view


def test_a_view_reads_and_writes_below_its_path(bucket, other):
    bucket["a"] = {"b": {"x": 1}}
    view = bucket.view("a/b")
    assert view["x"] == 1
    view["y"] = {"z": 2}
    assert other["a/b/y/z"] == 2
    assert view["y/z"] == 2
    del view["x"]
    assert other["a"] == {"b": {"y": {"z": 2}}}


def test_a_view_iterates_the_objects_keys(bucket):
    bucket["a"] = {"b": {"x": 1, "y": [2], "z": None}}
    view = bucket.view("a/b")
    assert list(view) == ["x", "y", "z"]
    assert len(view) == 3
    assert dict(view) == {"x": 1, "y": [2], "z": None}
    assert view == {"x": 1, "y": [2], "z": None}
    assert list(view.items()) == [("x", 1), ("y", [2]), ("z", None)]
    assert list(view.values()) == [1, [2], None]
    assert list(reversed(view)) == ["z", "y", "x"]


def test_a_view_of_a_list_has_positions_as_keys(bucket):
    bucket["l"] = ["a", "b"]
    view = bucket.view("l")
    assert list(view) == ["1", "2"]
    assert dict(view) == {"1": "a", "2": "b"}
    assert view["2"] == "b"


def test_a_view_of_a_missing_path_is_empty_and_writing_creates_it(bucket, other):
    view = bucket.view("new/deep")
    assert len(view) == 0
    assert list(view) == []
    assert dict(view) == {}
    assert not view
    assert "x" not in view
    with pytest.raises(KeyError):
        view["x"]
    view["x"] = 1
    assert other["new"] == {"deep": {"x": 1}}
    assert dict(view) == {"x": 1}


def test_a_view_of_a_scalar_is_empty(bucket):
    bucket["s"] = "text"
    view = bucket.view("s")
    assert len(view) == 0
    assert dict(view) == {}


def test_a_view_of_a_view_joins_the_paths(bucket, other):
    view = bucket.view("a").view("b/c")
    assert view.path == "a/b/c"
    view["d"] = 1
    assert other["a"] == {"b": {"c": {"d": 1}}}


def test_a_view_pops_and_popitems_inside_its_object(bucket, other):
    bucket["a"] = {"x": 1, "y": 2, "z": 3}
    view = bucket.view("a")
    assert view.pop("x") == 1
    assert view.popitem() == ("z", 3)
    assert other["a"] == {"y": 2}
    assert other.keys() == {"a"}


def test_clearing_a_view_empties_only_its_object(bucket, other):
    bucket.update({"a": {"x": 1, "y": 2}, "keep": 1})
    view = bucket.view("a")
    view.clear()
    assert len(view) == 0
    assert dict(other) == {"a": {}, "keep": 1}


def test_a_view_sees_a_write_through_its_bucket(bucket):
    bucket["cfg"] = {"x": 1}
    view = bucket.view("cfg")
    assert view["x"] == 1
    bucket["cfg/x"] = 2
    assert view["x"] == 2
    bucket["cfg"] = {"y": 3}
    assert dict(view) == {"y": 3}


def test_a_view_repr_names_its_path(bucket):
    assert "path='a/b'" in repr(bucket.view("a/b"))


# pickling, fork


def test_a_pickled_bucket_keeps_its_configuration_and_reads_the_same_data(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=3.0, maxsize=7)
    bucket["k"] = {"v": [1]}
    clone = pickle.loads(pickle.dumps(bucket))
    assert clone.url == bucket.url
    assert clone._cache.ttl == 3.0
    assert clone._cache.maxsize == 7
    assert clone["k"] == {"v": [1]}
    clone["from clone"] = 1
    assert bucket["from clone"] == 1


def test_a_pickled_view_keeps_its_path(bucket):
    bucket["a"] = {"b": {"x": 1}}
    clone = pickle.loads(pickle.dumps(bucket.view("a/b")))
    assert clone.path == "a/b"
    assert dict(clone) == {"x": 1}


def test_an_uncached_bucket_pickles_uncached(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    clone = pickle.loads(pickle.dumps(bucket))
    assert not clone._cache.enabled


def test_a_forked_child_uses_its_own_connection(bucket):
    bucket["parent"] = 1
    assert bucket["parent"] == 1
    parent_session = bucket._transport.session
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            bucket.invalidate()
            fresh = bucket._transport.session is not parent_session
            if fresh and bucket["parent"] == 1:
                bucket["child"] = 2
                status = 0
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert bucket._transport.session is parent_session
    assert bucket["child"] == 2
    bucket["after"] = 3
    assert bucket.pop("after") == 3


def fork_and_run(child) -> int:
    """Fork; the child runs ``child()`` (exit 0 if it returns True) and is killed after 5 s."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        status = 1
        try:
            status = 0 if child() else 1
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


@pytest.mark.parametrize("lock", ["cache", "templates"])
def test_a_child_forked_while_a_thread_held_a_cache_lock_does_not_hang(kvpio_account, lock):
    conn = connect(kvpio_account.url, kvpio_account.api_key)
    conn.bucket["k"] = "v"
    conn.templates["t"] = "{{ k }}"
    held, release = threading.Event(), threading.Event()

    def hold():
        with conn.bucket._cache.lock if lock == "cache" else conn.templates._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5)
        status = fork_and_run(lambda: conn.bucket["k"] == "v" and conn.templates["t"] == "v")
    finally:
        release.set()
        thread.join()
    assert status == 0


# errors are never KeyError


def test_a_wrong_api_key_raises_authentication_error(kvpio_account):
    bucket = KVBucket(kvpio_account.url, "not-a-key")
    operations = [
        lambda: bucket["k"],
        lambda: bucket.__setitem__("k", 1),
        lambda: bucket.__delitem__("k"),
        lambda: "k" in bucket,
        lambda: bucket.get("k", 1),
        lambda: bucket.pop("k", 1),
        lambda: len(bucket),
        lambda: dict(bucket),
    ]
    for operation in operations:
        with pytest.raises(AuthenticationError) as raised:
            operation()
        assert isinstance(raised.value, PermissionError)
        assert not isinstance(raised.value, KeyError)


NETWORK_OPERATIONS = {
    "getitem": lambda b: b["k"],
    "get default": lambda b: b.get("k", "default"),
    "contains": lambda b: "k" in b,
    "pop default": lambda b: b.pop("k", "default"),
    "delitem": lambda b: b.__delitem__("k"),
    "setdefault": lambda b: b.setdefault("k", 1),
    "setitem": lambda b: b.__setitem__("k", 1),
    "len": len,
    "popitem": lambda b: b.popitem(),
}


@pytest.mark.parametrize("operation", NETWORK_OPERATIONS.values(), ids=NETWORK_OPERATIONS.keys())
def test_an_unreachable_server_raises_transport_error_never_key_error(operation):
    transport = Transport(f"http://127.0.0.1:{closed_port()}", "key", retries=0)
    bucket = KVBucket(transport=transport)
    with pytest.raises(TransportError) as raised:
        operation(bucket)
    assert isinstance(raised.value, ConnectionError)
    assert not isinstance(raised.value, KeyError)
