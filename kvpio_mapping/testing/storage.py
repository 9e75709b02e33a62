"""The storage conformance suite: every backend must pass it (memory, SQLite, PostgreSQL).

A new backend reuses it the way SQLAlchemy dialects reuse theirs: a test module
that imports every test and provides a ``storage`` fixture yielding a fresh,
empty instance of the backend::

    import pytest
    from kvpio_mapping.testing.storage import *  # noqa: F403

    @pytest.fixture
    def storage():
        made = MyStorage(...)
        yield made
        made.close()

Values are compared as the JSON text the storages return, which must be
byte-identical across backends; the random tests compare the backend with
:class:`~kvpio_mapping.server.storage.MemoryStorage`, the reference. Needs
pytest and Hypothesis (the ``test`` extra).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpio_mapping import values
from kvpio_mapping.errors import InvalidPathError
from kvpio_mapping.paths import MISSING, Path, delete_in, get_in, set_in
from kvpio_mapping.server.storage import (
    AccountExistsError,
    InvalidAccountError,
    MemoryStorage,
    Storage,
    UnknownAccountError,
)
from kvpio_mapping.server.storage.base import (
    CHANGE_LOG_REVISIONS,
    LOGGED_ENTRIES,
    LOGGED_TEXT,
    AccountRecord,
    Change,
    Changes,
    Check,
    CheckFailedError,
    Committed,
    ConflictError,
    Failure,
    Operation,
    TopLevelSets,
    UncountableError,
    Write,
    hash_key,
)
from kvpio_mapping.server.storage.tree import BLOB_THRESHOLD


def p(key: str) -> Path:
    return tuple(key.split("/"))


def j(value: Any) -> str:
    """The text a storage must return for ``value``."""
    return values.encode(value).decode()


@pytest.fixture
def acct(storage: Storage) -> str:
    storage.create_account("alice", "alice@example.com", "alice-key")
    return "alice"


def big_doc(target: int, seed: int = 0) -> dict[str, Any]:
    """A realistic nested document of about ``target`` bytes of JSON."""
    doc: dict[str, Any] = {"meta": {"version": 3, "owner": "ops"}, "users": {}}
    users = doc["users"]
    i = 0
    size = 0
    while size < target:
        user = {
            "name": f"User {seed}-{i}",
            "email": f"user{i}@example.com",
            "tags": ["alpha", "beta", f"t{i % 7}"],
            "profile": {"bio": "lorem ipsum dolor sit amet " * (1 + i % 5), "age": i % 90},
            "history": [{"at": i * 10 + k, "what": "login"} for k in range(3)],
        }
        users[f"u{i}"] = user
        size += len(j(user)) + 8
        i += 1
    return doc


# the protocol's test vectors


def test_vector_string_reads_back(storage: Storage, acct: str) -> None:
    storage.set(acct, p("foo"), "bar")
    assert storage.get(acct, p("foo")) == '"bar"'


def test_vector_nested_object_reads_by_path(storage: Storage, acct: str) -> None:
    storage.set(acct, p("foo"), {"bar": {"baz": 123}})
    assert storage.get(acct, p("foo/bar/baz")) == "123"


def test_vector_list_reads_by_position_and_numeric_key(storage: Storage, acct: str) -> None:
    storage.set(acct, p("foo"), [1, {"10": "Ten", "20": [46], "2": "two"}, 3])
    assert storage.get(acct, p("foo/1")) == "1"
    assert storage.get(acct, p("foo/2/10")) == '"Ten"'
    assert storage.get(acct, p("foo/2/20/1")) == "46"


def test_vector_delete_makes_value_and_paths_below_missing(storage: Storage, acct: str) -> None:
    storage.set(acct, p("foo"), [1, {"10": "Ten", "20": [46], "2": "two"}, 3])
    storage.delete(acct, p("foo"))
    assert storage.get(acct, p("foo")) is None
    assert storage.get(acct, p("foo/2/20/1")) is None


# paths


def test_list_positions_are_one_based(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), ["a", "b", "c"])
    assert storage.get(acct, p("l/1")) == '"a"'
    assert storage.get(acct, p("l/3")) == '"c"'
    assert storage.get(acct, p("l/0")) is None
    assert storage.get(acct, p("l/4")) is None


def test_list_position_with_leading_zero_names_the_same_item(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), ["a", "b"])
    assert storage.get(acct, p("l/02")) == '"b"'


def test_numeric_looking_segment_on_object_is_a_key(storage: Storage, acct: str) -> None:
    storage.set(acct, p("o/1"), "one")
    storage.set(acct, p("o/01"), "oh-one")
    assert storage.get(acct, p("o")) == j({"1": "one", "01": "oh-one"})


def test_write_below_missing_parent_creates_objects(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a/b/c"), 1)
    assert storage.get(acct, p("a")) == j({"b": {"c": 1}})


def test_write_below_scalar_parent_replaces_it_with_object(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), {"b": 5})
    storage.set(acct, p("a/b/c"), 1)
    assert storage.get(acct, p("a")) == j({"b": {"c": 1}})


def test_write_below_scalar_list_item_replaces_it_with_object(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1, 2])
    storage.set(acct, p("l/2/x"), "y")
    assert storage.get(acct, p("l")) == j([1, {"x": "y"}])


def test_list_position_one_past_end_appends(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1, 2])
    storage.set(acct, p("l/3"), 3)
    assert storage.get(acct, p("l")) == j([1, 2, 3])


def test_list_append_below_creates_object_item(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1])
    storage.set(acct, p("l/2/k"), "v")
    assert storage.get(acct, p("l")) == j([1, {"k": "v"}])


def test_list_position_in_range_replaces(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1, 2, 3])
    storage.set(acct, p("l/2"), "two")
    assert storage.get(acct, p("l")) == j([1, "two", 3])


@pytest.mark.parametrize("segment", ["0", "5", "x", "-1", "1.0"])
def test_bad_list_segment_raises_and_changes_nothing(
    storage: Storage, acct: str, segment: str
) -> None:
    storage.set(acct, p("l"), [1, 2, 3])
    with pytest.raises(InvalidPathError):
        storage.set(acct, ("l", segment), "v")
    with pytest.raises(InvalidPathError):
        storage.set(acct, ("l", segment, "deeper"), "v")
    assert storage.get(acct, p("l")) == j([1, 2, 3])


def test_unicode_spaces_and_url_characters_in_segments(storage: Storage, acct: str) -> None:
    weird = ("héllo wörld", "100%", "what?", "#hash", "日本語", "a b+c&d=e")
    storage.set(acct, weird, {"ключ": "значение"})
    assert storage.get(acct, weird) == j({"ключ": "значение"})
    assert storage.keys(acct) == ["héllo wörld"]
    assert storage.keys(acct, weird[:-1]) == ["a b+c&d=e"]


def test_stored_keys_that_cannot_be_path_segments_round_trip(storage: Storage, acct: str) -> None:
    value = {"": 1, "a/b": 2, "nul\x00here": 3, ".": 4, "pad": "x" * (2 * BLOB_THRESHOLD)}
    storage.set(acct, p("odd"), value)
    assert storage.get(acct, p("odd")) == j(value)
    storage.set(acct, p("odd/pad"), "short")
    value["pad"] = "short"
    assert storage.get(acct, p("odd")) == j(value)


@pytest.mark.parametrize(
    "odd",
    [{"": 1}, {"nul\x00here": 1}, [0.00001, 1.5e-7], 2**64],
    ids=["empty key", "NUL key", "small floats", "big integer"],
)
def test_a_big_document_with_an_odd_part_deep_inside_stores_as_json_writes_it(
    storage: Storage, acct: str, odd: Any
) -> None:
    doc = big_doc(4 * BLOB_THRESHOLD)
    doc["users"]["u3"]["odd"] = odd
    storage.set(acct, p("doc"), doc)
    assert storage.get(acct, p("doc")) == j(doc)
    assert storage.get(acct, p("doc/users/u3/odd")) == j(odd)
    assert storage.get(acct, p("doc/users/u4/name")) == j(doc["users"]["u4"]["name"])
    storage.set(acct, p("doc/users/u3/name"), "renamed")
    doc["users"]["u3"]["name"] = "renamed"
    assert storage.get(acct, p("doc")) == j(doc)


@pytest.mark.parametrize("in_list", [False, True], ids=["object", "list"])
def test_a_big_document_whose_bulk_is_its_last_member_round_trips(
    storage: Storage, acct: str, in_list: bool
) -> None:
    def wrap(bulk: Any) -> Any:
        return ["x", 2, bulk] if in_list else {"é": 1, "ключ": "ü" * 9, "data": bulk}

    last = "3" if in_list else "data"
    inner = big_doc(3 * BLOB_THRESHOLD)
    inner["small"] = "after a split member, before the last"
    inner["zz"] = wrap(big_doc(2 * BLOB_THRESHOLD, seed=1))
    doc = wrap(inner)
    storage.set(acct, p("doc"), doc)
    assert storage.get(acct, p("doc")) == j(doc)
    deepest = inner["zz"][2 if in_list else "data"]
    assert storage.get(acct, ("doc", last, "zz", last, "users", "u1")) == j(deepest["users"]["u1"])
    storage.set(acct, ("doc", last, "zz", last, "meta", "owner"), "ünïcode")
    deepest["meta"]["owner"] = "ünïcode"
    assert storage.get(acct, p("doc")) == j(doc)


def test_get_text_is_compact_json_identical_to_values_encode(storage: Storage, acct: str) -> None:
    value = {"s": 'é"\\\n\u2028', "f": 1.5, "n": None, "b": [True, False], "e": {}, "l": []}
    storage.set(acct, p("v"), value)
    assert storage.get(acct, p("v")) == j(value)
    assert storage.get_all(acct) == j({"v": value})


# deletes


def test_delete_removes_subtree(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), {"b": {"c": 1, "d": 2}, "e": 3})
    storage.delete(acct, p("a/b"))
    assert storage.get(acct, p("a")) == j({"e": 3})
    assert storage.get(acct, p("a/b/c")) is None


def test_delete_list_item_moves_later_items_up(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), ["a", "b", "c", "d"])
    storage.delete(acct, p("l/2"))
    assert storage.get(acct, p("l")) == j(["a", "c", "d"])
    assert storage.get(acct, p("l/2")) == '"c"'
    assert storage.keys(acct, p("l")) == ["1", "2", "3"]


@pytest.mark.parametrize("missing", ["nope", "a/nope", "a/s/deeper", "a/l/9", "a/l/x", "a/l/0"])
def test_delete_missing_is_a_no_op(storage: Storage, acct: str, missing: str) -> None:
    storage.set(acct, p("a"), {"s": "str", "l": [1]})
    assert storage.delete(acct, p(missing), return_value=True) is None
    assert storage.get_all(acct) == j({"a": {"s": "str", "l": [1]}})


def test_delete_return_value_gives_removed_text(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), {"b": [1, {"c": "d"}]})
    assert storage.delete(acct, p("a/b"), return_value=True) == j([1, {"c": "d"}])
    assert storage.get(acct, p("a")) == "{}"


def test_delete_without_return_value_returns_none(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), 1)
    assert storage.delete(acct, p("a")) is None
    assert storage.get(acct, p("a")) is None


# keys and order


def test_keys_of_object_list_scalar_and_missing(storage: Storage, acct: str) -> None:
    storage.set(acct, p("o"), {"x": 1, "y": [5, 6, 7], "z": "s"})
    assert storage.keys(acct, p("o")) == ["x", "y", "z"]
    assert storage.keys(acct, p("o/y")) == ["1", "2", "3"]
    assert storage.keys(acct, p("o/z")) == []
    assert storage.keys(acct, p("o/missing")) == []
    assert storage.keys(acct, p("nothing/here")) == []


def test_keys_at_top_level_in_insertion_order(storage: Storage, acct: str) -> None:
    for key in ("zeta", "alpha", "10", "2"):
        storage.set(acct, (key,), key)
    assert storage.keys(acct) == ["zeta", "alpha", "10", "2"]


def test_overwrite_keeps_key_position(storage: Storage, acct: str) -> None:
    for key in ("a", "b", "c"):
        storage.set(acct, ("o", key), 1)
        storage.set(acct, (key,), 1)
    storage.set(acct, p("o/a"), {"big": "x" * BLOB_THRESHOLD})
    storage.set(acct, p("a"), "again")
    assert storage.keys(acct, p("o")) == ["a", "b", "c"]
    assert storage.keys(acct) == ["o", "a", "b", "c"]


def test_reinsert_after_delete_goes_last(storage: Storage, acct: str) -> None:
    for key in ("a", "b", "c"):
        storage.set(acct, ("o", key), 1)
        storage.set(acct, (key,), 1)
    storage.delete(acct, p("o/a"))
    storage.set(acct, p("o/a"), 2)
    storage.delete(acct, p("a"))
    storage.set(acct, p("a"), 2)
    assert storage.keys(acct, p("o")) == ["b", "c", "a"]
    assert storage.keys(acct) == ["o", "b", "c", "a"]


# conditional and batch writes


def test_only_if_missing_stores_when_nothing_is_there(storage: Storage, acct: str) -> None:
    assert storage.set(acct, p("a/b"), 1, only_if_missing=True) is True
    assert storage.get(acct, p("a/b")) == "1"


def test_only_if_missing_refuses_when_a_value_exists(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a/b"), None)
    assert storage.set(acct, p("a/b"), 2, only_if_missing=True) is False
    assert storage.set(acct, p("a"), 2, only_if_missing=True) is False
    assert storage.get(acct, p("a")) == j({"b": None})


def test_set_many_applies_pairs_in_order(storage: Storage, acct: str) -> None:
    storage.set_many(acct, [(p("a"), [1]), (p("a/2"), 2), (p("b/c"), 3), (p("a/1"), 0)])
    assert storage.get_all(acct) == j({"a": [0, 2], "b": {"c": 3}})


@pytest.fixture(params=[False, True], ids=["decoded", "decoded later"])
def later(request: pytest.FixtureRequest) -> bool:
    """Whether a test's :class:`TopLevelSets` are made decoded, or decoded as the storage reads."""
    return bool(request.param)


def _top_level_sets(text: str, later: bool = False) -> TopLevelSets:
    if later:
        return TopLevelSets.decoded_later(text.encode(), lambda: _top_level_sets(text))
    return TopLevelSets(json.loads(text), text.encode())


def _plain_members(count: int, prefix: str) -> dict[str, Any]:
    """More than a logged commit's worth of top-level keys, of every plain kind of value."""
    kinds = [7, -12, 0, "text", "ünïcode ✓", "", True, False, None, -(10**17) - 3]
    return {f"{prefix}{n}-ключ": kinds[n % len(kinds)] for n in range(count)}


def test_top_level_sets_store_what_their_operations_would(
    storage: Storage, acct: str, later: bool
) -> None:
    storage.set(acct, p("first"), 1)
    storage.set(acct, p("split"), big_doc(3 * BLOB_THRESHOLD))
    bucket: dict[str, Any] = {"first": 1, "split": big_doc(3 * BLOB_THRESHOLD)}
    new = _plain_members(LOGGED_ENTRIES + 5, "k")
    for members in (
        new,  # new keys only
        {**_plain_members(LOGGED_ENTRIES + 1, "m"), **dict.fromkeys(list(new)[:3], "again")},
        {**_plain_members(LOGGED_ENTRIES + 1, "f"), "float": 1.5, "big": 2**70},
    ):
        text = json.dumps(members, ensure_ascii=False)
        committed = storage.commit(acct, _top_level_sets(text, later))
        assert committed.results == [None] * len(members)
        bucket.update(members)
        assert storage.get_all(acct) == j(bucket)
        assert storage.count(acct)[0] == len(bucket)
    escaped = json.dumps(_plain_members(LOGGED_ENTRIES + 1, 'q"\\'))  # escapes, \u in keys
    storage.commit(acct, _top_level_sets(escaped, later))
    bucket.update(json.loads(escaped))
    storage.commit(acct, _top_level_sets(json.dumps({"split": 5, **new}), later))  # was split
    bucket.update({"split": 5, **new})
    storage.set(acct, p("last"), [1])
    bucket["last"] = [1]
    assert storage.get_all(acct) == j(bucket)
    assert storage.keys(acct) == list(bucket)
    assert storage.get(acct, p("k5-ключ")) == '""' and storage.get(acct, p("k9-ключ")) == str(
        -(10**17) - 3
    )
    assert storage.count(acct)[0] == len(bucket)


def test_top_level_sets_with_a_key_twice_keep_its_first_place_and_last_value(
    storage: Storage, acct: str, later: bool
) -> None:
    members = _plain_members(LOGGED_ENTRIES + 1, "d")
    text = json.dumps(members, ensure_ascii=False)[:-1] + ', "d0-ключ": "last", "d1-ключ": 1}'
    storage.commit(acct, _top_level_sets(text, later))
    assert storage.get_all(acct) == j(json.loads(text))
    assert storage.count(acct)[0] == len(members)
    assert storage.changes(acct, 0).changes == [Change(1, "reread", (), None)]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(_plain_members(LOGGED_ENTRIES + 5, "x")),  # JSON, refused by the maker
        json.dumps(_plain_members(LOGGED_ENTRIES + 5, "x"))[:-1] + ', "x": 1 oops}',
        json.dumps(_plain_members(LOGGED_ENTRIES + 5, "x"))[:-1] + ', "c": [1, }',
        '{"a": 1, "a": 2',
    ],
    ids=["refused", "garbage at the end", "broken container", "cut short"],
)
def test_top_level_sets_that_fail_to_decode_raise_their_error_and_store_nothing(
    storage: Storage, acct: str, text: str
) -> None:
    storage.set(acct, p("kept"), 1)
    before = (storage.get_all(acct), storage.revision(acct), storage.count(acct))

    def refuse() -> TopLevelSets:
        raise ValueError("refused by the maker")

    with pytest.raises(ValueError, match="refused by the maker"):
        storage.commit(acct, TopLevelSets.decoded_later(text.encode(), refuse))
    assert (storage.get_all(acct), storage.revision(acct), storage.count(acct)) == before
    storage.commit(acct, _top_level_sets(json.dumps(_plain_members(LOGGED_ENTRIES + 5, "x")), True))
    assert storage.count(acct)[0] == LOGGED_ENTRIES + 6  # and the same keys store afterwards


def test_a_bulk_import_then_writes_reads_and_deletes_of_its_keys(
    storage: Storage, acct: str, later: bool
) -> None:
    members = _plain_members(LOGGED_ENTRIES + 1, "b")
    storage.commit(acct, _top_level_sets(json.dumps(members, ensure_ascii=False), later))
    bucket = dict(members)
    storage.delete(acct, p("b3-ключ"))
    storage.set(acct, p("b4-ключ/below"), 1)
    storage.set(acct, p("b5-ключ"), 2)
    storage.set(acct, p("after"), 3)
    del bucket["b3-ключ"]
    bucket.update({"b4-ключ": {"below": 1}, "b5-ключ": 2, "after": 3})
    assert storage.get_all(acct) == j(bucket)
    assert storage.keys(acct) == list(bucket)
    assert storage.get(acct, p("b6-ключ")) == j(members["b6-ключ"])
    assert storage.count(acct)[0] == len(bucket)
    account = storage.account(acct)
    assert account is not None and account.size == len(j(bucket).encode())


def test_set_many_stores_nothing_when_one_pair_is_invalid(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1])
    with pytest.raises(InvalidPathError):
        storage.set_many(
            acct, [(p("new"), "x" * (3 * BLOB_THRESHOLD)), (p("l/2"), 2), (p("l/9"), 9)]
        )
    assert storage.get_all(acct) == j({"l": [1]})


def test_clear_removes_values_and_keeps_templates(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), big_doc(3 * BLOB_THRESHOLD))
    storage.set_template(acct, "t", "{{ a }}")
    storage.clear(acct)
    assert storage.get_all(acct) == "{}"
    assert storage.keys(acct) == []
    assert storage.get_template(acct, "t") == "{{ a }}"


def test_empty_bucket_is_an_empty_object(storage: Storage, acct: str) -> None:
    assert storage.get_all(acct) == "{}"
    assert storage.get(acct, p("x")) is None


# templates


def test_templates_store_overwrite_delete_and_list_in_order(storage: Storage, acct: str) -> None:
    storage.set_template(acct, "b", "B")
    storage.set_template(acct, "a", "A")
    storage.set_template(acct, "b", "B2")
    assert storage.list_templates(acct) == ["b", "a"]
    assert storage.get_template(acct, "b") == "B2"
    assert storage.delete_template(acct, "b") is True
    assert storage.delete_template(acct, "b") is False
    assert storage.get_template(acct, "b") is None
    assert storage.list_templates(acct) == ["a"]


def test_template_sources_keep_every_character(storage: Storage, acct: str) -> None:
    source = 'a\x00b "\\ \u00e9\U0001f600 {{ x }}\n'
    storage.set_template(acct, "t", source)
    assert storage.get_template(acct, "t") == source
    record = storage.account_records()[0]
    storage.delete_account(acct)
    storage.restore_account(record, {}, [("t", source)])
    assert storage.get_template(acct, "t") == source


def test_template_names_are_separate_from_bucket_keys(storage: Storage, acct: str) -> None:
    storage.set_template(acct, "foo", "src")
    storage.set(acct, p("foo"), "value")
    assert storage.get_template(acct, "foo") == "src"
    assert storage.get(acct, p("foo")) == '"value"'


# accounts


def test_create_account_returns_given_key_that_authenticates(storage: Storage) -> None:
    assert storage.create_account("bob", "b@example.com", "bob-key") == "bob-key"
    assert storage.authenticate("bob-key") == "bob"


def test_create_account_without_key_returns_a_fresh_working_key(storage: Storage) -> None:
    key = storage.create_account("bob", "")
    assert len(key) >= 20
    assert storage.authenticate(key) == "bob"


def test_create_account_with_taken_id_raises(storage: Storage) -> None:
    storage.create_account("bob", "", "k1")
    with pytest.raises(AccountExistsError):
        storage.create_account("bob", "", "k2")
    assert storage.authenticate("k2") is None


def test_create_account_with_taken_key_raises(storage: Storage) -> None:
    storage.create_account("bob", "", "k1")
    with pytest.raises(AccountExistsError):
        storage.create_account("carol", "", "k1")
    assert storage.account("carol") is None


def test_ensure_account_creates_once_then_finds_it(storage: Storage) -> None:
    assert storage.ensure_account("k", "dev", "d@example.com") == "dev"
    assert storage.ensure_account("k", "other") == "dev"
    assert [a.id for a in storage.list_accounts()] == ["dev"]


def test_ensure_account_with_id_taken_by_another_key_raises(storage: Storage) -> None:
    storage.create_account("dev", "", "k1")
    with pytest.raises(AccountExistsError):
        storage.ensure_account("k2", "dev")


@pytest.mark.parametrize(
    ("id", "email"),
    [("", ""), ("a\x00b", ""), ("ok", "a\x00@example.com"), ("tab\there", ""), ("x" * 257, "")],
)
def test_an_account_id_or_email_no_backend_can_store_is_refused(
    storage: Storage, id: str, email: str
) -> None:
    with pytest.raises(InvalidAccountError):
        storage.create_account(id, email, "k1")
    with pytest.raises(InvalidAccountError):
        storage.ensure_account("k1", id, email)
    assert storage.list_accounts() == []
    assert storage.authenticate("k1") is None


def test_an_account_id_may_be_any_printable_text(storage: Storage) -> None:
    for id in ("café", "a b/c", "x" * 256, "\U0001f600"):
        storage.create_account(id, "é@example.com", f"key-{id}")
        assert storage.authenticate(f"key-{id}") == id


def test_wrong_key_does_not_authenticate(storage: Storage, acct: str) -> None:
    assert storage.authenticate("alice-key ") is None
    assert storage.authenticate("") is None


def test_account_facts_never_include_the_key(storage: Storage, acct: str) -> None:
    account = storage.account(acct)
    assert account is not None
    assert (account.id, account.email, account.reads, account.size) == (
        "alice",
        "alice@example.com",
        0,
        2,
    )
    assert "alice-key" not in repr(account)
    assert storage.account("nobody") is None


def test_list_accounts_sorted_by_id(storage: Storage) -> None:
    for id in ("carol", "alice", "bob"):
        storage.create_account(id, "", f"{id}-key")
    assert [a.id for a in storage.list_accounts()] == ["alice", "bob", "carol"]


def test_delete_account_removes_it_with_values_and_templates(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), big_doc(3 * BLOB_THRESHOLD))
    storage.set_template(acct, "t", "x")
    assert storage.delete_account(acct) is True
    assert storage.delete_account(acct) is False
    assert storage.authenticate("alice-key") is None
    storage.create_account("alice", "", "new-key")
    assert storage.get_all("alice") == "{}"
    assert storage.list_templates("alice") == []


def test_a_write_to_a_deleted_account_is_an_unknown_account_and_leaves_nothing(
    storage: Storage, acct: str
) -> None:
    storage.delete_account(acct)
    with pytest.raises(UnknownAccountError):
        storage.set(acct, p("a"), 1)
    with pytest.raises(UnknownAccountError):
        storage.clear(acct)
    storage.create_account(acct, "", "again-key")
    assert storage.get_all(acct) == "{}"


def test_accounts_are_isolated(storage: Storage, acct: str) -> None:
    storage.create_account("bob", "", "bob-key")
    storage.set(acct, p("x/y"), big_doc(2 * BLOB_THRESHOLD, seed=1))
    storage.set("bob", p("x/y"), "bob's")
    storage.set_template("bob", "t", "bob")
    assert storage.get("bob", p("x")) == j({"y": "bob's"})
    assert storage.get(acct, p("x/y/meta/owner")) == '"ops"'
    storage.delete("bob", p("x"))
    assert storage.get(acct, p("x/y/meta/owner")) == '"ops"'
    assert storage.list_templates(acct) == []


def test_writes_to_an_unknown_account_raise_key_error(storage: Storage, acct: str) -> None:
    with pytest.raises(KeyError):
        storage.set("ghost", p("a"), 1)
    with pytest.raises(KeyError):
        storage.set_many("ghost", [(p("a"), 1)])
    with pytest.raises(KeyError):
        storage.delete("ghost", p("a"))
    with pytest.raises(KeyError):
        storage.clear("ghost")
    with pytest.raises(KeyError):
        storage.set_template("ghost", "t", "x")
    storage.create_account("ghost", "", "ghost-key")
    assert storage.get_all("ghost") == "{}"
    assert storage.list_templates("ghost") == []


def test_add_reads_counts_per_account_and_ignores_unknown(storage: Storage, acct: str) -> None:
    storage.create_account("bob", "", "bob-key")
    storage.add_reads({acct: 3, "bob": 1, "ghost": 5})
    storage.add_reads({acct: 2})
    storage.add_reads({})
    reads = {a.id: a.reads for a in storage.list_accounts()}
    assert reads == {"alice": 5, "bob": 1}


def test_size_is_bytes_of_the_bucket_as_compact_json(storage: Storage, acct: str) -> None:
    storage.set(acct, p("ü"), {"ключ": ["é", 1.25, None]})
    storage.set(acct, p("doc"), big_doc(5 * BLOB_THRESHOLD))
    storage.set(acct, p("doc/users/u1/profile/bio"), "日本")
    storage.delete(acct, p("doc/users/u2"))
    account = storage.account(acct)
    assert account is not None
    assert account.size == len(storage.get_all(acct).encode())


# large documents: the blob/split boundary in both directions


def test_two_megabyte_document_round_trips_exactly(storage: Storage, acct: str) -> None:
    doc = big_doc(2_000_000)
    storage.set(acct, p("doc"), doc)
    assert storage.get(acct, p("doc")) == j(doc)
    assert storage.get_all(acct) == j({"doc": doc})
    assert storage.keys(acct, p("doc/users"))[:3] == ["u0", "u1", "u2"]


def test_nested_writes_and_deletes_deep_in_large_document(storage: Storage, acct: str) -> None:
    doc = big_doc(300_000)
    storage.set(acct, p("doc"), doc)
    storage.set(acct, p("doc/users/u5/profile/age"), 99)
    storage.set(acct, p("doc/users/u5/history/4"), {"at": 1, "what": "new"})
    storage.set(acct, p("doc/users/u7/tags/2/x"), "y")
    storage.set(acct, p("doc/users/new/name"), "Newbie")
    storage.delete(acct, p("doc/users/u3"))
    storage.delete(acct, p("doc/users/u6/history/1"))
    doc["users"]["u5"]["profile"]["age"] = 99
    doc["users"]["u5"]["history"].append({"at": 1, "what": "new"})
    doc["users"]["u7"]["tags"][1] = {"x": "y"}
    doc["users"]["new"] = {"name": "Newbie"}
    del doc["users"]["u3"]
    del doc["users"]["u6"]["history"][0]
    assert storage.get(acct, p("doc")) == j(doc)
    assert storage.get(acct, p("doc/users/u6/history/1")) == j(doc["users"]["u6"]["history"][0])


def test_small_value_grown_past_threshold_by_nested_writes(storage: Storage, acct: str) -> None:
    expected: dict[str, Any] = {}
    for i in range(12):
        chunk = {"text": f"{i}" * (BLOB_THRESHOLD // 4), "n": i}
        storage.set(acct, ("g", "items", f"k{i}"), chunk)
        expected[f"k{i}"] = chunk
    storage.set(acct, p("g/items/k3/n"), "changed")
    expected["k3"]["n"] = "changed"
    assert storage.get(acct, p("g")) == j({"items": expected})
    assert storage.keys(acct, p("g/items")) == list(expected)


def test_large_value_shrunk_below_threshold_by_deletes(storage: Storage, acct: str) -> None:
    value: dict[str, Any] = {
        f"k{i}": {"text": "t" * (BLOB_THRESHOLD // 3), "n": [i]} for i in range(10)
    }
    storage.set(acct, p("s"), value)
    for i in range(9):
        storage.delete(acct, ("s", f"k{i}"))
        del value[f"k{i}"]
        assert storage.get(acct, p("s")) == j(value)
    storage.set(acct, p("s/k9/n/2"), "appended")
    value["k9"]["n"].append("appended")
    assert storage.get(acct, p("s")) == j(value)
    assert storage.keys(acct, p("s")) == ["k9"]


def test_large_list_item_delete_and_append(storage: Storage, acct: str) -> None:
    items: list[Any] = [{"i": i, "pad": "p" * 300, "sub": [i, [i]]} for i in range(100)]
    storage.set(acct, p("l"), items)
    storage.delete(acct, p("l/10"))
    storage.delete(acct, p("l/99"))
    storage.set(acct, p("l/99"), "tail")
    storage.set(acct, p("l/5/sub/2/2"), "deep")
    del items[9]
    del items[98]
    items.append("tail")
    items[4]["sub"][1].append("deep")
    assert storage.get(acct, p("l")) == j(items)
    assert storage.keys(acct, p("l")) == [str(i) for i in range(1, 100)]
    assert storage.get(acct, p("l/10/i")) == "10"
    with pytest.raises(InvalidPathError):
        storage.set(acct, p("l/101"), "too far")


def test_large_value_replaced_by_scalar_and_back(storage: Storage, acct: str) -> None:
    doc = big_doc(50_000)
    storage.set(acct, p("d"), doc)
    storage.set(acct, p("d"), 7)
    assert storage.get(acct, p("d")) == "7"
    storage.set(acct, p("d/users"), doc["users"])
    assert storage.get(acct, p("d")) == j({"users": doc["users"]})


def test_long_flat_list_of_tiny_items(storage: Storage, acct: str) -> None:
    items: list[Any] = list(range(20_000))
    storage.set(acct, p("l"), items)
    assert storage.get(acct, p("l")) == j(items)
    assert storage.get(acct, p("l/1")) == "0"
    assert storage.get(acct, p("l/007")) == "6"
    assert storage.get(acct, p("l/20000")) == "19999"
    assert storage.get(acct, p("l/20001")) is None
    assert storage.get(acct, p("l/0")) is None
    storage.set(acct, p("l/500"), "five hundred")
    storage.set(acct, p("l/501/x"), [1, 2])
    storage.set(acct, p("l/20001"), -1)
    assert storage.delete(acct, p("l/3"), return_value=True) == "2"
    assert storage.delete(acct, p("l/1"), return_value=True) == "0"
    storage.set(acct, p("l/600/x/3"), 3)
    items[499] = "five hundred"
    items[500] = {"x": [1, 2]}
    items.append(-1)
    del items[2]
    del items[0]
    assert items[599] == 601  # a scalar parent becomes an object
    items[599] = {"x": {"3": 3}}
    assert storage.get(acct, p("l")) == j(items)
    assert storage.get(acct, p("l/498")) == j(items[497])
    assert storage.get(acct, p("l/499/x/2")) == "2"
    assert storage.keys(acct, p("l/499/x")) == ["1", "2"]
    assert storage.keys(acct, p("l"))[-1] == str(len(items))
    with pytest.raises(InvalidPathError):
        storage.set(acct, p("l/20002"), "too far")
    account = storage.account(acct)
    assert account is not None
    assert account.size == len(j({"l": items}))


def test_long_flat_object_of_small_members(storage: Storage, acct: str) -> None:
    members: dict[str, Any] = {f"k{i}": i for i in range(10_000)}
    storage.set(acct, p("o"), members)
    assert storage.get(acct, p("o")) == j(members)
    assert storage.get(acct, p("o/k9999")) == "9999"
    assert storage.get(acct, p("o/missing")) is None
    assert storage.set(acct, p("o/k5"), "x", only_if_missing=True) is False
    assert storage.set(acct, p("o/k5/deeper"), "x", only_if_missing=True) is True
    storage.set(acct, p("o/k7"), {"nested": [1, 2, 3]})
    storage.set(acct, p("o/k8"), "big " * BLOB_THRESHOLD)
    storage.set(acct, p("o/new"), True)
    assert storage.delete(acct, p("o/k1"), return_value=True) == "1"
    assert storage.delete(acct, p("o/k7/nested/2"), return_value=True) == "2"
    assert storage.delete(acct, p("o/k7/nested/9"), return_value=True) is None
    storage.set(acct, p("o/k1"), "back, last")
    members["k5"] = {"deeper": "x"}
    members["k7"] = {"nested": [1, 3]}
    members["k8"] = "big " * BLOB_THRESHOLD
    members["new"] = True
    del members["k1"]
    members["k1"] = "back, last"
    assert storage.get(acct, p("o")) == j(members)
    assert storage.keys(acct, p("o")) == list(members)
    assert storage.keys(acct, p("o/k7")) == ["nested"]
    assert storage.get(acct, p("o/k8")) == j(members["k8"])
    storage.set(acct, p("o/k8"), 8)
    members["k8"] = 8
    assert storage.get(acct, p("o")) == j(members)


def test_packed_items_grow_and_shrink_in_place(storage: Storage, acct: str) -> None:
    items: list[Any] = [[i] for i in range(3_000)]
    storage.set(acct, p("l"), items)
    for position in (1, 2, 1500, 2999, 3000):
        storage.set(acct, ("l", str(position), "2"), "x" * 200)
        items[position - 1].append("x" * 200)
        storage.set(acct, ("l", str(position), "3"), "y" * BLOB_THRESHOLD)
        items[position - 1].append("y" * BLOB_THRESHOLD)
    assert storage.get(acct, p("l")) == j(items)
    for position in (3000, 1500, 2, 1):
        storage.delete(acct, ("l", str(position), "3"))
        del items[position - 1][2]
    assert storage.get(acct, p("l")) == j(items)
    for position in (1, 1, 700, 1400, 2995):
        assert storage.delete(acct, ("l", str(position)), return_value=True) == j(
            items.pop(position - 1)
        )
        assert storage.get(acct, p("l")) == j(items)
    for _ in range(600):
        storage.set(acct, ("l", str(len(items) + 1)), len(items))
        items.append(len(items))
    assert storage.get(acct, p("l")) == j(items)
    assert storage.keys(acct, p("l")) == [str(i) for i in range(1, len(items) + 1)]
    for position in range(1, len(items) + 1, 97):
        assert storage.get(acct, ("l", str(position))) == j(items[position - 1])


def test_appends_one_by_one_to_long_containers(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), list(range(2_000)))
    storage.set(acct, p("o"), {f"m{i}": [i] for i in range(1_000)})
    items: list[Any] = list(range(2_000))
    members: dict[str, Any] = {f"m{i}": [i] for i in range(1_000)}
    for i in range(1_500):
        value: Any = "v" * (i % 700) if i % 50 == 0 else i
        storage.set(acct, ("l", str(len(items) + 1)), value)
        items.append(value)
        storage.set(acct, ("o", f"n{i}"), value)
        members[f"n{i}"] = value
    assert storage.get(acct, p("l")) == j(items)
    assert storage.get(acct, p("o")) == j(members)
    assert storage.keys(acct, p("o")) == list(members)
    for key in ("m0", "n0", "n1", "n777", "m999", "n1499"):
        assert storage.delete(acct, ("o", key), return_value=True) == j(members.pop(key))
    assert storage.get(acct, p("o")) == j(members)
    assert storage.keys(acct, p("o")) == list(members)


# counts: len() of a container in constant time


def dict_count(data: Any, path: Path) -> object:
    """What a count of ``path`` in the bucket ``data`` must answer, as ``len()`` says it."""
    found = get_in(data, path)
    if found is MISSING:
        return None
    return len(found) if type(found) in (dict, list) else UncountableError


def counted(storage: Storage, account: str, path: Path = ()) -> object:
    """The storage's count at ``path`` (without its revision), or UncountableError."""
    try:
        return storage.count(account, path)[0]
    except UncountableError:
        return UncountableError


def test_count_of_objects_lists_scalars_and_missing_paths(storage: Storage, acct: str) -> None:
    assert storage.count(acct) == (0, 0)
    storage.set(acct, p("o"), {"x": 1, "y": [1, 2, 3], "z": "s", "e": {}, "n": None})
    assert storage.count(acct) == (1, 1)
    assert storage.count(acct, p("o")) == (5, 1)
    assert storage.count(acct, p("o/y")) == (3, 1)
    assert storage.count(acct, p("o/e")) == (0, 1)
    assert storage.count(acct, p("o/missing")) == (None, 1)
    assert storage.count(acct, p("o/y/9")) == (None, 1)
    assert storage.count(acct, p("o/z/below")) == (None, 1)
    assert storage.count(acct, p("nothing/here")) == (None, 1)
    for scalar, kind in (
        ("o/x", "number"),
        ("o/z", "string"),
        ("o/n", "null"),
        ("o/y/2", "number"),
    ):
        with pytest.raises(UncountableError, match=f"cannot count the {kind} at '{scalar}'"):
            storage.count(acct, p(scalar))


def test_count_of_large_containers_and_their_packed_members(storage: Storage, acct: str) -> None:
    doc = big_doc(200_000)
    flat = {f"k{i}": i for i in range(3000)}
    storage.set(acct, p("doc"), doc)
    storage.set(acct, p("flat"), flat)
    storage.set(acct, p("list"), list(range(5000)))
    bucket = {"doc": doc, "flat": flat, "list": list(range(5000))}
    for path in ("doc", "doc/users", "doc/users/u3", "doc/users/u3/history", "flat", "list"):
        assert counted(storage, acct, p(path)) == dict_count(bucket, p(path)), path
    assert counted(storage, acct, p("list/02")) is UncountableError
    assert counted(storage, acct, p("flat/k7")) is UncountableError
    assert counted(storage, acct) == 3


def test_count_of_the_bucket_follows_every_write_form(storage: Storage, acct: str) -> None:
    bucket: dict[str, Any] = {}

    def agree() -> None:
        assert storage.count(acct)[0] == len(bucket)

    storage.set(acct, p("a"), 1)
    storage.set(acct, p("a"), 2)
    storage.set(acct, p("b/c/d"), 3)
    bucket.update(a=2, b={"c": {"d": 3}})
    agree()
    storage.set_many(acct, [(p(f"m{i}"), i) for i in range(50)] + [(p("a"), 0), (p("x/y"), 1)])
    bucket.update({f"m{i}": i for i in range(50)}, a=0, x={"y": 1})
    agree()
    storage.delete(acct, p("m7"))
    storage.delete(acct, p("m7"))
    storage.delete(acct, p("b/c"))
    assert storage.delete(acct, p("m8"), return_value=True) == "8"
    del bucket["m7"], bucket["m8"], bucket["b"]["c"]
    agree()
    storage.commit(
        acct,
        [
            Operation("increment", p("n"), 1),
            Operation("append", p("l"), "x"),
            Operation("merge", p("g"), {"k": 1}),
            Operation("pop", p("m9")),
            Operation("delete", p("m10")),
            Operation("set", p("m10/again"), True),
        ],
    )
    bucket.update(n=1, l=["x"], g={"k": 1}, m10={"again": True})
    del bucket["m9"]
    agree()
    with pytest.raises(ConflictError):
        storage.commit(acct, [Operation("set", p("new"), 1), Operation("append", p("n"), 1)])
    with pytest.raises(CheckFailedError):
        storage.commit(acct, [Operation("set", p("new"), 1)], [Check(p("a"), None)])
    agree()
    storage.clear(acct)
    bucket.clear()
    agree()
    storage.set(acct, p("after"), 1)
    assert storage.count(acct) == (1, storage.revision(acct))


def test_count_of_nested_containers_follows_writes_at_every_size(
    storage: Storage, acct: str
) -> None:
    members = {f"k{i}": ("v" * (i % 300)) if i % 5 else {"deep": [i]} for i in range(400)}
    items: list[Any] = [("i" * (i % 200)) if i % 3 else [i, {"x": i}] for i in range(400)]
    storage.set(acct, p("o"), values.copy(members))
    storage.set(acct, p("l"), values.copy(items))
    bucket: dict[str, Any] = {"o": members, "l": items}
    edits: list[tuple[str, str, Any]] = [
        ("set", "o/new", "tiny"),
        ("set", "o/big", "B" * 3000),
        ("delete", "o/k1", None),
        ("delete", "o/k5", None),
        ("delete", "o/big", None),
        ("set", "o/k10/deep/2", 1),
        ("set", "l/401", "appended"),
        ("set", "l/402", ["big" * 900]),
        ("delete", "l/1", None),
        ("delete", "l/2", None),
        ("delete", "l/401", None),
        ("set", "l/3/3", "grown"),
        ("delete", "l/3/1", None),
    ]
    for kind, path, value in edits:
        if kind == "set":
            storage.set(acct, p(path), value)
            set_in(bucket, p(path), values.copy(value))
        else:
            storage.delete(acct, p(path))
            delete_in(bucket, p(path))
        for at in ("o", "l", "o/k10", "o/k10/deep", "l/3", "l/3/2", path):
            assert counted(storage, acct, p(at)) == dict_count(bucket, p(at)), (kind, path, at)
    storage.commit(acct, [Operation("append", p("l"), 1), Operation("merge", p("o"), {"m": 2})])
    bucket["l"].append(1)
    bucket["o"]["m"] = 2
    assert counted(storage, acct, p("l")) == len(bucket["l"])
    assert counted(storage, acct, p("o")) == len(bucket["o"])
    storage.set(acct, p("o"), "scalar now")
    assert counted(storage, acct, p("o")) is UncountableError


# agreement with the reference under random operations


SEGMENTS = st.sampled_from(["a", "b", "1", "2", "3", "02"])


PATHS = st.lists(SEGMENTS, min_size=1, max_size=4).map(tuple)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(["", "é", "x" * 40, "L" * (BLOB_THRESHOLD // 2), "H" * (BLOB_THRESHOLD + 1)]),
)


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(SEGMENTS, inner, max_size=4)
    ),
    max_leaves=12,
)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), PATHS, VALUES, st.booleans()),
        st.tuples(st.just("delete"), PATHS, st.booleans()),
        st.tuples(st.just("set_many"), st.lists(st.tuples(PATHS, VALUES), max_size=3)),
    ),
    max_size=25,
)


def _apply(storage: Storage, account: str, operation: tuple[Any, ...]) -> object:
    try:
        if operation[0] == "set":
            return storage.set(account, operation[1], operation[2], only_if_missing=operation[3])
        if operation[0] == "delete":
            return storage.delete(account, operation[1], return_value=operation[2])
        storage.set_many(account, operation[1])
    except InvalidPathError:
        return InvalidPathError
    return None


FLAT_PATHS = st.tuples(
    st.sampled_from(["l", "o"]),
    st.sampled_from(["1", "2", "3", "05", "17", "40", "41", "60", "0", "k1", "k7", "new", "a"]),
    st.lists(st.sampled_from(["a", "1", "2"]), max_size=2),
).map(lambda parts: ("flat", parts[0], parts[1], *parts[2]))


FLAT_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), FLAT_PATHS, VALUES, st.booleans()),
        st.tuples(st.just("delete"), FLAT_PATHS, st.booleans()),
        st.tuples(st.just("set_many"), st.lists(st.tuples(FLAT_PATHS, VALUES), max_size=3)),
    ),
    max_size=30,
)


# revisions, checks and atomic operations


def tag(value: Any) -> str:
    """The ETag of a stored value."""
    return values.etag(values.encode(value))


def test_revision_is_zero_before_the_first_write(storage: Storage, acct: str) -> None:
    assert storage.revision(acct) == 0
    assert storage.read(acct, p("nothing")) == (None, 0)


def test_every_committed_write_raises_the_revision_by_one(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), 1)
    storage.set_many(acct, [(p("b"), 2), (p("c"), 3)])
    storage.delete(acct, p("nothing"))
    storage.delete(acct, p("a"), return_value=True)
    storage.commit(acct, [Operation("increment", p("n"), 1), Operation("append", p("l"), 0)])
    storage.set_template(acct, "t", "x")
    storage.delete_template(acct, "t")
    assert storage.clear(acct) == 8
    assert storage.revision(acct) == 8


def test_read_gives_the_value_with_its_revision(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), {"b": 1})
    storage.set(acct, p("c"), 2)
    assert storage.read(acct, p("a/b")) == ("1", 2)
    assert storage.read(acct, ()) == (j({"a": {"b": 1}, "c": 2}), 2)


def test_refused_writes_leave_the_revision(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1])
    with pytest.raises(InvalidPathError):
        storage.set(acct, p("l/5"), 1)
    assert not storage.set(acct, p("l"), 2, only_if_missing=True)
    with pytest.raises(ConflictError):
        storage.commit(acct, [Operation("increment", p("l"), 1)])
    assert storage.revision(acct) == 1


def test_commit_reports_its_revision_and_results(storage: Storage, acct: str) -> None:
    storage.set(acct, p("gone"), {"x": [1]})
    done = storage.commit(
        acct,
        [
            Operation("set", p("a"), "x"),
            Operation("increment", p("n"), 2.5),
            Operation("append", p("l"), "first"),
            Operation("append", p("l"), "second"),
            Operation("merge", p("m"), {"k": 1}),
            Operation("pop", p("gone")),
            Operation("pop", p("gone")),
            Operation("delete", p("nothing")),
        ],
    )
    assert done == Committed(2, [None, "2.5", "1", "2", None, j({"x": [1]}), None, None])
    assert storage.get_all(acct) == j({"a": "x", "n": 2.5, "l": ["first", "second"], "m": {"k": 1}})


def test_increment_counts_missing_as_zero_and_keeps_ints(storage: Storage, acct: str) -> None:
    assert storage.commit(acct, [Operation("increment", p("a/n"), 5)]).results == ["5"]
    assert storage.commit(acct, [Operation("increment", p("a/n"), -7)]).results == ["-2"]
    assert storage.get(acct, p("a")) == j({"n": -2})


def test_increment_of_a_float_and_in_a_list(storage: Storage, acct: str) -> None:
    storage.set(acct, p("l"), [1.5, 10])
    storage.commit(acct, [Operation("increment", p("l/1"), 1), Operation("increment", p("l/2"), 1)])
    assert storage.get(acct, p("l")) == j([2.5, 11])


@pytest.mark.parametrize("target", ["text", True, None, [1], {"a": 1}])
def test_increment_of_a_non_number_is_a_conflict(storage: Storage, acct: str, target: Any) -> None:
    storage.set(acct, p("t"), target)
    with pytest.raises(ConflictError, match="'t': it is not a number"):
        storage.commit(acct, [Operation("increment", p("t"), 1)])
    assert storage.get(acct, p("t")) == j(target)


@pytest.mark.parametrize("by", ["1", True, None, [1]])
def test_increment_by_a_non_number_is_refused(storage: Storage, acct: str, by: Any) -> None:
    with pytest.raises(ValueError, match="needs a number"):
        storage.commit(acct, [Operation("increment", p("n"), by)])
    assert storage.revision(acct) == 0


def test_increment_past_the_largest_float_is_refused(storage: Storage, acct: str) -> None:
    storage.set(acct, p("n"), 1.7e308)
    with pytest.raises(ValueError):
        storage.commit(acct, [Operation("increment", p("n"), 1.7e308)])
    assert storage.get(acct, p("n")) == "1.7e+308"


def test_append_creates_a_list_and_returns_positions(storage: Storage, acct: str) -> None:
    results = [
        storage.commit(acct, [Operation("append", p("a/l"), i)]).results[0] for i in range(3)
    ]
    assert results == ["1", "2", "3"]
    assert storage.get(acct, p("a")) == j({"l": [0, 1, 2]})


@pytest.mark.parametrize("target", ["text", 1, {"a": 1}, {"big": "x" * 2 * BLOB_THRESHOLD}])
def test_append_to_a_non_list_is_a_conflict(storage: Storage, acct: str, target: Any) -> None:
    storage.set(acct, p("t"), target)
    with pytest.raises(ConflictError, match="not a list"):
        storage.commit(acct, [Operation("append", p("t"), 1)])
    assert storage.get(acct, p("t")) == j(target)


def test_append_to_a_long_list_and_below_a_position(storage: Storage, acct: str) -> None:
    long = [{"i": i, "pad": "x" * 40} for i in range(400)]
    storage.set(acct, p("d"), {"long": long, "nested": [[1]]})
    assert storage.commit(acct, [Operation("append", p("d/long"), "end")]).results == ["401"]
    assert storage.commit(acct, [Operation("append", p("d/nested/01"), 2)]).results == ["2"]
    assert storage.get(acct, p("d/long/401")) == '"end"'
    assert storage.get(acct, p("d/nested")) == j([[1, 2]])


def test_merge_sets_members_shallowly(storage: Storage, acct: str) -> None:
    storage.set(acct, p("m"), {"keep": 1, "deep": {"a": 1, "b": 2}})
    storage.commit(acct, [Operation("merge", p("m"), {"deep": {"c": 3}, "new": [1]})])
    assert storage.get(acct, p("m")) == j({"keep": 1, "deep": {"c": 3}, "new": [1]})


def test_merge_into_a_large_object(storage: Storage, acct: str) -> None:
    doc = big_doc(3 * BLOB_THRESHOLD)
    storage.set(acct, p("doc"), doc)
    storage.commit(acct, [Operation("merge", p("doc/users"), {"u0": 0, "zz": 1})])
    doc["users"].update({"u0": 0, "zz": 1})
    assert storage.get(acct, p("doc")) == j(doc)


@pytest.mark.parametrize("target", [[1], "text", 0])
def test_merge_into_a_non_object_is_a_conflict(storage: Storage, acct: str, target: Any) -> None:
    storage.set(acct, p("t"), target)
    with pytest.raises(ConflictError, match="not an object"):
        storage.commit(acct, [Operation("merge", p("t"), {"a": 1})])


@pytest.mark.parametrize("value", [[1], "x", {"a/b": 1}, {"": 1}, {"..": 1}])
def test_merge_of_what_is_not_an_object_of_segments_is_refused(
    storage: Storage, acct: str, value: Any
) -> None:
    with pytest.raises(ValueError):
        storage.commit(acct, [Operation("merge", p("m"), value)])
    assert storage.revision(acct) == 0


def test_checks_that_hold_let_the_commit_apply(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), {"x": 1})
    checks = [Check(p("a"), tag({"x": 1})), Check(p("a/x"), "*"), Check(p("b"), None)]
    storage.commit(acct, [Operation("set", p("b"), 2)], checks)
    assert storage.get(acct, p("b")) == "2"


def test_weak_form_of_the_tag_is_accepted(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a"), 1)
    storage.commit(acct, [Operation("set", p("a"), 2)], [Check(p("a"), "W/" + tag(1))])
    assert storage.get(acct, p("a")) == "2"


def test_failed_checks_are_all_named_with_current_values(storage: Storage, acct: str) -> None:
    storage.set_many(acct, [(p("a"), 1), (p("b"), [2])])
    checks = [
        Check(p("a"), tag(0)),
        Check(p("a"), tag(1)),
        Check(p("b"), None),
        Check(p("c"), "*"),
        Check(p("c"), tag(None)),
    ]
    with pytest.raises(CheckFailedError) as caught:
        storage.commit(acct, [Operation("set", p("z"), 1)], checks)
    assert caught.value.failures == [
        Failure(0, p("a"), "1", tag(1)),
        Failure(2, p("b"), "[2]", tag([2])),
        Failure(3, p("c"), None, None),
        Failure(4, p("c"), None, None),
    ]
    assert storage.get(acct, p("z")) is None
    assert storage.revision(acct) == 1


def test_check_of_a_large_value_uses_its_whole_text(storage: Storage, acct: str) -> None:
    doc = big_doc(3 * BLOB_THRESHOLD)
    storage.set(acct, p("doc"), doc)
    storage.commit(acct, [Operation("set", p("doc/meta/version"), 4)], [Check(p("doc"), tag(doc))])
    with pytest.raises(CheckFailedError):
        storage.commit(acct, [Operation("set", p("x"), 1)], [Check(p("doc"), tag(doc))])


def test_a_failing_operation_applies_none_of_the_commit(storage: Storage, acct: str) -> None:
    storage.set_many(acct, [(p("n"), 1), (p("s"), "text"), (p("l"), [1])])
    before = storage.get_all(acct)
    for bad in (Operation("increment", p("s"), 1), Operation("set", p("l/9"), 1)):
        with pytest.raises(ValueError):
            storage.commit(
                acct,
                [Operation("increment", p("n"), 1), Operation("pop", p("n")), bad],
            )
    assert storage.get_all(acct) == before
    assert storage.revision(acct) == 1


def test_commit_to_an_unknown_account_raises_key_error(storage: Storage, acct: str) -> None:
    with pytest.raises(KeyError):
        storage.commit("nobody", [Operation("increment", p("n"), 1)])


def test_commit_group_refuses_writes_one_by_one_and_commits_the_rest(
    storage: Storage, acct: str
) -> None:
    storage.create_account("bob", "bob@example.com", "bob-key")
    storage.set(acct, p("text"), "a string")
    storage.set(acct, p("list"), [0])
    outcomes = storage.commit_group(
        [
            Write(acct, [Operation("set", p("a"), 1)]),
            Write(acct, [Operation("increment", p("text"), 1)]),
            Write("bob", [Operation("set", p("b"), 2)]),
            Write(acct, [Operation("set", p("c"), 3)], [Check(p("c"), '"no-such-etag"')]),
            Write("nobody", [Operation("set", p("d"), 4)]),
            Write(acct, [Operation("set", p("list/9"), 5)]),
            Write(acct, [Operation("set", p("e"), 6), Operation("append", p("list"), 1)]),
        ]
    )
    assert outcomes[0] == Committed(3, [None])
    assert isinstance(outcomes[1], ConflictError)
    assert outcomes[2] == Committed(1, [None])
    assert isinstance(outcomes[3], CheckFailedError)
    assert isinstance(outcomes[4], UnknownAccountError)
    assert isinstance(outcomes[5], InvalidPathError)
    assert outcomes[6] == Committed(4, [None, "2"])
    assert storage.get_all(acct) == j({"text": "a string", "list": [0, 1], "a": 1, "e": 6})
    assert storage.get_all("bob") == j({"b": 2})
    assert [change.revision for change in storage.changes(acct, 2).changes] == [3, 4, 4]


def test_commit_group_keeps_counts_of_what_it_committed_only(storage: Storage, acct: str) -> None:
    storage.set(acct, p("o"), {"x": 1})
    storage.commit_group(
        [
            Write(acct, [Operation("set", p("new"), 1), Operation("set", p("o/y"), 2)]),
            Write(acct, [Operation("set", p("gone"), 1), Operation("increment", p("o"), 1)]),
            Write(acct, [Operation("set", p("o/z"), 3), Operation("delete", p("new"))]),
        ]
    )
    assert storage.get_all(acct) == j({"o": {"x": 1, "y": 2, "z": 3}})
    assert counted(storage, acct) == 1
    assert counted(storage, acct, p("o")) == 3


class Model:
    """The bucket as a dict and its revision: what a commit must do, stated plainly."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.revision = 0

    def commit(self, operations: list[Operation], checks: list[Check]) -> object:
        failed = []
        for index, check in enumerate(checks):
            found = get_in(self.data, check.path)
            current = None if found is MISSING else tag(found)
            holds = current is not None if check.etag == "*" else current == check.etag
            if not holds:
                failed.append(index)
        if failed:
            return ("failed", failed)
        data = values.copy(self.data)
        results: list[Any] = []
        try:
            for kind, path, given in operations:
                value = values.copy(given)
                found = get_in(data, path)
                if kind == "set":
                    set_in(data, path, value)
                    results.append(None)
                elif kind in ("delete", "pop"):
                    delete_in(data, path)
                    shown = None if found is MISSING or kind == "delete" else j(found)
                    results.append(shown)
                elif kind == "increment":
                    found = 0 if found is MISSING else found
                    if type(found) not in (int, float):
                        return ConflictError
                    set_in(data, path, found + value)
                    results.append(j(found + value))
                elif kind == "append":
                    found = [] if found is MISSING else found
                    if type(found) is not list:
                        return ConflictError
                    set_in(data, path, [*found, value])
                    results.append(str(len(found) + 1))
                else:
                    found = {} if found is MISSING else found
                    if type(found) is not dict:
                        return ConflictError
                    set_in(data, path, {**found, **value})
                    results.append(None)
        except InvalidPathError:
            return InvalidPathError
        self.data = data
        self.revision += 1
        return (self.revision, results)


def replay(changes: list[Change], history: dict[int, Any]) -> Any:
    """The bucket a follower of the log rebuilds from ``{}``.

    ``history`` holds the bucket after each revision: a ``reread`` takes the
    value there, as a follower reading it at once would.
    """
    data: Any = {}
    for change in changes:
        if change.kind == "put":
            assert change.text is not None
            if change.path:
                set_in(data, change.path, json.loads(change.text))
            else:
                data = json.loads(change.text)
        elif change.kind == "delete":
            if change.path:
                delete_in(data, change.path)
            else:
                data = {}
        elif change.kind == "reread":
            found = get_in(history[change.revision], change.path)
            if not change.path:
                data = values.copy(found)
            elif found is MISSING:
                delete_in(data, change.path)
            else:
                set_in(data, change.path, values.copy(found))
    return data


def _commit(
    storage: Storage, account: str, operations: list[Operation], checks: list[Check]
) -> object:
    try:
        return tuple(storage.commit(account, operations, checks))
    except CheckFailedError as exc:
        return ("failed", [failure.check for failure in exc.failures])
    except ConflictError:
        return ConflictError
    except InvalidPathError:
        return InvalidPathError


COMMIT_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), PATHS, VALUES),
        st.tuples(st.sampled_from(["delete", "pop"]), PATHS, st.none()),
        st.tuples(st.just("increment"), PATHS, st.integers(-3, 3)),
        st.tuples(st.just("append"), PATHS, VALUES),
        st.tuples(st.just("merge"), PATHS, st.dictionaries(SEGMENTS, VALUES, max_size=3)),
    ).map(lambda parts: Operation(*parts)),
    min_size=1,
    max_size=5,
)


COMMITS = st.lists(
    st.tuples(COMMIT_OPERATIONS, st.lists(st.tuples(PATHS, st.integers(0, 2)), max_size=3)),
    max_size=12,
)


# the change log


def test_change_log_starts_empty_and_complete(storage: Storage, acct: str) -> None:
    assert storage.changes(acct, 0) == Changes(0, [], True)


def test_change_log_holds_each_write_with_its_revision(storage: Storage, acct: str) -> None:
    storage.set(acct, p("a/b"), {"c": 1})
    storage.delete(acct, p("a/b/c"))
    storage.commit(acct, [Operation("increment", p("n"), 2), Operation("append", p("l"), "x")])
    storage.commit(acct, [Operation("append", p("l"), "y"), Operation("merge", p("m"), {"k": 1})])
    storage.clear(acct)
    assert storage.changes(acct, 0) == Changes(
        5,
        [
            Change(1, "put", p("a/b"), '{"c":1}'),
            Change(2, "delete", p("a/b/c"), None),
            Change(3, "put", p("n"), "2"),
            Change(3, "put", p("l"), '["x"]'),
            Change(4, "put", p("l/2"), '"y"'),
            Change(4, "put", p("m/k"), "1"),
            Change(5, "delete", (), None),
        ],
        True,
    )


def test_change_log_answers_after_a_revision(storage: Storage, acct: str) -> None:
    for n in range(4):
        storage.set(acct, p("n"), n)
    assert storage.changes(acct, 2) == Changes(
        4, [Change(3, "put", p("n"), "2"), Change(4, "put", p("n"), "3")], True
    )
    assert storage.changes(acct, 4) == Changes(4, [], True)


def test_change_log_logs_templates(storage: Storage, acct: str) -> None:
    storage.set_template(acct, "page/home", "{{ a }}")
    storage.delete_template(acct, "page/home")
    assert storage.changes(acct, 0).changes == [
        Change(1, "template", ("page/home",), "{{ a }}"),
        Change(2, "template", ("page/home",), None),
    ]


def test_change_log_asks_to_reread_a_value_too_long_to_log(storage: Storage, acct: str) -> None:
    storage.set(acct, p("big"), "x" * LOGGED_TEXT)
    assert storage.changes(acct, 0).changes == [Change(1, "reread", p("big"), None)]


def test_a_commit_too_large_to_log_asks_to_reread_its_common_ancestor(
    storage: Storage, acct: str
) -> None:
    many = [(("cfg", f"k{n}"), n) for n in range(LOGGED_ENTRIES + 1)]
    storage.set_many(acct, many)
    storage.set_many(acct, [((f"top{n}",), n) for n in range(LOGGED_ENTRIES + 1)])
    merged = {f"m{n}": n for n in range(LOGGED_ENTRIES + 1)}
    storage.commit(acct, [Operation("merge", p("cfg"), merged)])
    assert storage.changes(acct, 0).changes == [
        Change(1, "reread", p("cfg"), None),
        Change(2, "reread", (), None),
        Change(3, "reread", p("cfg"), None),
    ]


def test_a_commit_with_a_reread_among_several_changes_rereads_their_common_ancestor(
    storage: Storage, acct: str
) -> None:
    storage.commit(
        acct,
        [
            Operation("merge", p("b/a"), {}),
            Operation("set", p("b/c"), 1),
        ],
    )
    assert storage.changes(acct, 0).changes == [Change(1, "reread", p("b"), None)]


def test_a_reread_after_a_delete_in_one_commit_rereads_the_deleted_keys_parent(
    storage: Storage, acct: str
) -> None:
    # Deleted and made again, "b" moves after "a": only its parent can show that.
    storage.set(acct, p("b"), None)
    storage.set(acct, p("a"), None)
    storage.commit(acct, [Operation("delete", p("b"), None), Operation("merge", p("b"), {})])
    assert storage.get_all(acct) == '{"a":null,"b":{}}'
    assert storage.changes(acct, 2).changes == [Change(3, "reread", (), None)]


def test_failed_commits_log_nothing(storage: Storage, acct: str) -> None:
    storage.set(acct, p("s"), "text")
    with pytest.raises(ConflictError):
        storage.commit(acct, [Operation("set", p("t"), 1), Operation("increment", p("s"), 1)])
    assert not storage.set(acct, p("s"), 2, only_if_missing=True)
    assert storage.changes(acct, 0) == Changes(1, [Change(1, "put", p("s"), '"text"')], True)


def test_change_log_answers_whole_revisions_in_batches(storage: Storage, acct: str) -> None:
    storage.commit(acct, [Operation("set", (f"k{n}",), n) for n in range(5)])
    storage.set(acct, p("after"), 1)
    first = storage.changes(acct, 0, limit=2)
    assert (first.revision, len(first.changes), first.complete) == (1, 5, True)
    assert storage.changes(acct, first.revision, limit=2).changes == [
        Change(2, "put", p("after"), "1")
    ]


def test_change_log_keeps_a_bounded_number_of_revisions(storage: Storage, acct: str) -> None:
    for n in range(CHANGE_LOG_REVISIONS + 3):
        storage.set(acct, p("n"), n)
    last = CHANGE_LOG_REVISIONS + 3
    assert storage.changes(acct, 2) == Changes(last, [], False)
    kept = storage.changes(acct, 3, limit=10 * CHANGE_LOG_REVISIONS)
    assert kept.complete and len(kept.changes) == CHANGE_LOG_REVISIONS


def test_change_log_refuses_a_revision_ahead_of_the_account(storage: Storage, acct: str) -> None:
    storage.set(acct, p("n"), 1)
    assert storage.changes(acct, 5) == Changes(1, [], False)


def test_change_log_of_an_unknown_or_deleted_account_raises(storage: Storage, acct: str) -> None:
    with pytest.raises(UnknownAccountError):
        storage.changes("nobody", 0)
    storage.delete_account(acct)
    with pytest.raises(UnknownAccountError):
        storage.changes(acct, 0)


def test_restored_account_reads_back_with_its_key_revision_and_templates(
    storage: Storage,
) -> None:
    big = big_doc(3 * BLOB_THRESHOLD)
    record = AccountRecord("bob", "bob@example.com", hash_key("bob-key"), 7, 41)
    bucket = {"big": big, "n": 1, "list": [1, {"a": None}]}
    storage.restore_account(record, bucket, [("z", "{{ n }}"), ("a", "x")])
    assert storage.authenticate("bob-key") == "bob"
    assert storage.account_records() == [record]
    assert storage.read("bob", p("big")) == (j(big), 41)
    assert storage.get_all("bob") == j(bucket)
    assert storage.list_templates("bob") == ["z", "a"]
    assert storage.get_template("bob", "z") == "{{ n }}"
    # The log starts at the copy: what came before is not there to replay.
    assert storage.changes("bob", 0) == Changes(41, [], False)
    assert storage.commit("bob", [Operation("increment", p("n"), 1)]).revision == 42
    assert storage.changes("bob", 41) == Changes(42, [Change(42, "put", p("n"), "2")], True)


def test_restore_over_a_taken_id_or_key_raises_and_changes_nothing(
    storage: Storage, acct: str
) -> None:
    storage.set(acct, p("k"), 1)
    same_id = AccountRecord(acct, "", hash_key("other-key"), 0, 9)
    same_key = AccountRecord("carol", "", hash_key("alice-key"), 0, 9)
    for record in (same_id, same_key):
        with pytest.raises(AccountExistsError):
            storage.restore_account(record, {"k": 2}, [])
    assert storage.get_all(acct) == '{"k":1}'
    assert [record.id for record in storage.account_records()] == [acct]


RANDOM_CHECKS: Final = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
"""Each example takes a fresh account, so the test's one ``storage`` serves them all."""


def assert_operations_agree(backends: list[Storage], operations: list[tuple[Any, ...]]) -> None:
    """Apply ``operations`` in a fresh account of each backend: all answer and end as the first."""
    account = uuid.uuid4().hex
    for backend in backends:
        backend.create_account(account, "", account)
    reference, *others = backends
    touched: set[Path] = set()
    for operation in operations:
        expected = _apply(reference, account, operation)
        for backend in others:
            assert _apply(backend, account, operation) == expected, operation
        if operation[0] == "set_many":
            touched.update(path for path, _value in operation[1])
        else:
            touched.add(operation[1])
    whole = reference.get_all(account)
    for backend in others:
        assert backend.get_all(account) == whole
        assert backend.keys(account) == reference.keys(account)
        data = json.loads(whole)
        assert counted(backend, account) == len(data)
        for path in touched:
            for prefix in (path[:depth] for depth in range(1, len(path) + 1)):
                assert backend.get(account, prefix) == reference.get(account, prefix), prefix
                assert backend.keys(account, prefix) == reference.keys(account, prefix), prefix
                assert counted(backend, account, prefix) == dict_count(data, prefix), prefix
        facts = backend.account(account)
        assert facts is not None
        assert facts.size == len(whole.encode())


def assert_flat_operations_agree(
    backends: list[Storage], operations: list[tuple[Any, ...]], length: int, size: int
) -> None:
    """:func:`assert_operations_agree` below two long containers of ``length`` small items."""
    account = uuid.uuid4().hex
    small = ["", 0, "é", [1], {"a": None}][: size + 2]
    start = {
        "l": [small[i % len(small)] for i in range(length)],
        "o": {f"k{i}": small[i % len(small)] for i in range(length)},
    }
    reference, *others = backends
    for backend in backends:
        backend.create_account(account, "", account)
        backend.set(account, ("flat",), start)
    for operation in operations:
        expected = _apply(reference, account, operation)
        for backend in others:
            assert _apply(backend, account, operation) == expected, operation
    whole = reference.get_all(account)
    for backend in others:
        assert backend.get_all(account) == whole
        for top in ("l", "o"):
            assert backend.keys(account, ("flat", top)) == reference.keys(account, ("flat", top))
            expected = dict_count(json.loads(whole), ("flat", top))
            assert counted(backend, account, ("flat", top)) == expected
            for key in reference.keys(account, ("flat", top)):
                at = ("flat", top, key)
                assert backend.get(account, at) == reference.get(account, at), at
        facts = backend.account(account)
        assert facts is not None
        assert facts.size == len(whole.encode())


def assert_commits_agree_with_a_model(
    backends: list[Storage], commits: list[tuple[list[Operation], list[tuple[Path, int]]]]
) -> None:
    """Random commits with checks: every backend answers, logs and ends as the :class:`Model`."""
    account = uuid.uuid4().hex
    for backend in backends:
        backend.create_account(account, "", account)
    model = Model()
    history: dict[int, Any] = {0: {}}
    for operations, wanted in commits:
        # Each check expects what is there now, nothing, or anything, at random.
        checks = []
        for path, which in wanted:
            found = get_in(model.data, path)
            now = None if found is MISSING else tag(found)
            checks.append(Check(path, [now, None, "*"][which]))
        expected = model.commit(operations, checks)
        for backend in backends:
            assert _commit(backend, account, operations, checks) == expected, (operations, checks)
            assert counted(backend, account) == len(model.data)
            for operation in operations:
                for at in (operation.path[:depth] for depth in range(1, len(operation.path) + 1)):
                    assert counted(backend, account, at) == dict_count(model.data, at), at
        history[model.revision] = values.copy(model.data)
    whole = j(model.data)
    for backend in backends:
        assert backend.read(account, ()) == (whole, model.revision)
        logged = backend.changes(account, 0)
        assert logged.complete and logged.revision == model.revision
        assert j(replay(logged.changes, history)) == whole


@settings(max_examples=60, deadline=None, suppress_health_check=RANDOM_CHECKS)
@given(operations=OPERATIONS)
def test_random_operations_agree_with_memory_storage(
    storage: Storage, operations: list[tuple[Any, ...]]
) -> None:
    assert_operations_agree([MemoryStorage(), storage], operations)


@settings(max_examples=30, deadline=None, suppress_health_check=RANDOM_CHECKS)
@given(operations=FLAT_OPERATIONS, length=st.integers(0, 60), size=st.integers(0, 3))
def test_random_operations_on_long_flat_containers_agree_with_memory_storage(
    storage: Storage, operations: list[tuple[Any, ...]], length: int, size: int
) -> None:
    assert_flat_operations_agree([MemoryStorage(), storage], operations, length, size)


@settings(max_examples=60, deadline=None, suppress_health_check=RANDOM_CHECKS)
@given(commits=COMMITS)
def test_random_atomic_commits_agree_with_a_model(
    storage: Storage, commits: list[tuple[list[Operation], list[tuple[Path, int]]]]
) -> None:
    assert_commits_agree_with_a_model([storage], commits)
