"""Write-back mode: live containers write every mutation through to its exact path.

Checked against the real server: the nested idioms of dict code, one request
per mutation, the cache kept exact, and a Hypothesis state machine running
the same nested mutations on live containers and on a plain ``dict`` model.
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kvpio_mapping import InvalidPathError, KVBucket, LiveDict, LiveList, WriteBackBucket
from kvpio_mapping.testing import new_account


@pytest.fixture
def bucket(kvpio_account):
    return WriteBackBucket(kvpio_account.url, kvpio_account.api_key)


@pytest.fixture
def server(kvpio_account):
    """What the server holds, read without a cache."""
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


@pytest.fixture
def sent(bucket, count_requests):
    return count_requests(bucket)


def test_setdefault_then_append_stores_the_item(bucket, server):
    bucket.setdefault("key", []).append(3)
    assert bucket["key"][0] == 3
    assert server["key"] == [3]


def test_assigning_into_a_read_value_writes_its_path(bucket, server, sent):
    bucket["cfg"] = {"debug": False, "level": 1}
    sent.reset()
    bucket["cfg"]["debug"] = True
    assert sent.sent == [("GET", "bucket/cfg"), ("POST", "bucket/cfg/debug")]
    assert server["cfg"] == {"debug": True, "level": 1}
    assert bucket["cfg"]["debug"] is True


def test_live_values_are_dicts_and_lists(bucket):
    bucket["cfg"] = {"a": [1, {"b": 2}]}
    cfg = bucket["cfg"]
    assert isinstance(cfg, dict) and isinstance(cfg, LiveDict)
    assert isinstance(cfg["a"], list) and isinstance(cfg["a"], LiveList)
    assert cfg == {"a": [1, {"b": 2}]}
    assert json.loads(json.dumps(cfg)) == {"a": [1, {"b": 2}]}
    assert type(pickle.loads(pickle.dumps(cfg))) is dict
    assert type(copy.deepcopy(cfg)) is dict
    assert type(cfg.copy()) is dict
    assert bucket.get("cfg") == cfg


def test_each_mutation_is_one_request_to_its_exact_path(bucket, sent):
    bucket["doc"] = {"log": [{"n": 1}, {"n": 2}], "tags": {}}
    doc = bucket["doc"]
    log = doc["log"]
    sent.reset()
    log[1]["n"] = 20
    log.append({"n": 3})
    del log[0]
    log[0]["n"] = 200  # the item moved up: now at position 1
    log.extend([4, 5])
    log.pop()
    doc["tags"].update(a=1, b=2)
    doc["tags"].pop("a")
    doc.setdefault("new", {})["x"] = 1
    assert sent.sent == [
        ("POST", "bucket/doc/log/2/n"),
        ("POST", "bucket/doc/log/3"),
        ("DELETE", "bucket/doc/log/1?pop=true"),
        ("POST", "bucket/doc/log/1/n"),
        ("POST", "bucket/"),
        ("DELETE", "bucket/doc/log/4?pop=true"),
        ("POST", "bucket/"),
        ("DELETE", "bucket/doc/tags/a?pop=true"),
        ("POST", "bucket/doc/new"),
        ("POST", "bucket/doc/new/x"),
    ]
    expected = {"log": [{"n": 200}, {"n": 3}, 4], "tags": {"b": 2}, "new": {"x": 1}}
    assert doc == expected
    assert KVBucket(bucket.url, bucket._transport.api_key, ttl=0)["doc"] == expected


def test_the_cache_is_exact_after_each_mutation(bucket):
    bucket["cfg"] = {"a": {"b": 1}}
    cfg = bucket["cfg"]
    assert bucket["cfg/a/b"] == 1  # cached
    cfg["a"]["b"] = 2
    assert bucket["cfg/a/b"] == 2
    assert bucket["cfg"] == {"a": {"b": 2}}
    del cfg["a"]
    assert "cfg/a" not in bucket


def test_a_refused_mutation_leaves_the_container_and_the_bucket_unchanged(bucket, server, sent):
    bucket["cfg"] = {"a": 1}
    cfg = bucket["cfg"]
    sent.reset()
    with pytest.raises(TypeError):
        cfg["b"] = {1, 2}
    with pytest.raises(InvalidPathError):
        cfg["a/b"] = 1
    with pytest.raises(TypeError):
        cfg[1] = 1  # type: ignore[index]
    with pytest.raises(InvalidPathError):
        cfg.update({"ok": 1, "..": 2})
    assert sent.count == 0
    assert cfg == {"a": 1}
    assert server["cfg"] == {"a": 1}


def test_list_index_errors_are_lists_and_send_nothing(bucket, sent):
    bucket["l"] = [1]
    items = bucket["l"]
    sent.reset()
    with pytest.raises(IndexError, match="list assignment index out of range"):
        items[5] = 1
    with pytest.raises(IndexError, match="pop index out of range"):
        items.pop(3)
    with pytest.raises(ValueError):
        items.remove(99)
    assert sent.count == 0


def test_a_removed_container_is_detached_and_stops_writing(bucket, server, sent):
    bucket["cfg"] = {"a": {"x": 1}, "b": 2}
    cfg = bucket["cfg"]
    inner = cfg.pop("a")
    sent.reset()
    inner["x"] = 2
    assert sent.count == 0
    assert inner == {"x": 2}
    assert server["cfg"] == {"b": 2}


def test_a_live_value_of_a_view_writes_below_the_view(bucket, server):
    bucket["v"] = {"cfg": {"a": 1}}
    view = bucket.view("v")
    view["cfg"]["a"] = 2
    assert server["v"] == {"cfg": {"a": 2}}


def test_the_default_bucket_still_hands_out_copies(kvpio_account, server):
    plain = KVBucket(kvpio_account.url, kvpio_account.api_key)
    plain["cfg"] = {"debug": False}
    plain["cfg"]["debug"] = True
    assert type(plain["cfg"]) is dict
    assert server["cfg"] == {"debug": False}


# the same nested mutations on live containers and on a dict model

KEYS = st.sampled_from(["a", "b", "1"])
SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)


def containers(value: Any, route: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The route (dict keys, list indexes) to every dict and list inside ``value``."""
    found: list[tuple[Any, ...]] = []
    if type(value) in (dict, list):
        found.append(route)
        items = value.items() if type(value) is dict else enumerate(value)
        for key, item in items:
            found += containers(item, (*route, key))
    return found


def follow(value: Any, route: tuple[Any, ...]) -> Any:
    for step in route:
        value = value[step]
    return value


DICT_MUTATIONS = ["set", "del", "pop", "popitem", "setdefault", "update", "clear", "ior"]
LIST_MUTATIONS = [
    "append",
    "set",
    "del",
    "pop",
    "insert",
    "extend",
    "iadd",
    "reverse",
    "clear",
    "remove",
    "slice",
    "imul",
]


class WriteBackMachine(RuleBasedStateMachine):
    """Holds live top-level values across steps, so list positions shift under them."""

    server: Any

    def __init__(self) -> None:
        super().__init__()
        account = new_account(self.server)
        self.bucket = WriteBackBucket(account.url, account.api_key)
        self.reader = KVBucket(account.url, account.api_key, ttl=0)
        self.model: dict[str, Any] = {}
        self.live: dict[str, Any] = {}

    @rule(key=KEYS, value=st.dictionaries(KEYS, VALUES, max_size=3) | st.lists(VALUES, max_size=3))
    def store(self, key: str, value: Any) -> None:
        self.bucket[key] = value
        self.model[key] = copy.deepcopy(value)
        self.live[key] = self.bucket[key]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def mutate(self, data: st.DataObject) -> None:
        top = data.draw(st.sampled_from(sorted(self.live)))
        route = data.draw(st.sampled_from(containers(self.model[top])))
        target, model = follow(self.live[top], route), follow(self.model[top], route)
        if type(model) is dict:
            self.mutate_dict(data, target, model)
        else:
            self.mutate_list(data, target, model)
        assert target == model

    def mutate_dict(self, data: st.DataObject, target: Any, model: dict[str, Any]) -> None:
        how = data.draw(st.sampled_from(DICT_MUTATIONS))
        key = data.draw(KEYS)
        value = data.draw(VALUES)
        both = (target, model)
        if how == "set":
            for each in both:
                each[key] = copy.deepcopy(value)
        elif how in ("del", "pop", "popitem"):
            outcomes = []
            for each in both:
                try:
                    if how == "del":
                        del each[key]
                        outcomes.append(None)
                    elif how == "pop":
                        outcomes.append(each.pop(key, "dflt"))
                    else:
                        outcomes.append(each.popitem())
                except KeyError as exc:
                    outcomes.append(("KeyError", exc.args))
            assert outcomes[0] == outcomes[1]
        elif how == "setdefault":
            assert target.setdefault(key, copy.deepcopy(value)) == model.setdefault(
                key, copy.deepcopy(value)
            )
        elif how in ("update", "ior"):
            other = data.draw(st.dictionaries(KEYS, VALUES, max_size=2))
            for each in both:
                if how == "update":
                    each.update(copy.deepcopy(other))
                else:
                    each |= copy.deepcopy(other)
        else:
            for each in both:
                each.clear()

    def mutate_list(self, data: st.DataObject, target: Any, model: list[Any]) -> None:
        how = data.draw(st.sampled_from(LIST_MUTATIONS))
        index = data.draw(st.integers(-4, 4))
        value = data.draw(VALUES)
        outcomes = []
        for each in (target, model):
            try:
                if how == "append":
                    each.append(copy.deepcopy(value))
                elif how == "set":
                    each[index] = copy.deepcopy(value)
                elif how == "del":
                    del each[index]
                elif how == "pop":
                    outcomes.append(each.pop(index))
                elif how == "insert":
                    each.insert(index, copy.deepcopy(value))
                elif how == "extend":
                    each.extend([copy.deepcopy(value), 1])
                elif how == "iadd":
                    each += [copy.deepcopy(value)]
                elif how == "reverse":
                    each.reverse()
                elif how == "clear":
                    each.clear()
                elif how == "remove":
                    each.remove(value)
                elif how == "slice":
                    each[index:] = [copy.deepcopy(value)]
                elif each is target:
                    each *= 2
                else:
                    each[:] = [copy.deepcopy(item) for item in each * 2]  # copies, not aliases
            except (IndexError, ValueError) as exc:
                outcomes.append((type(exc), exc.args))
        assert outcomes[: len(outcomes) // 2] == outcomes[len(outcomes) // 2 :]

    @invariant()
    def the_server_holds_the_model(self) -> None:
        assert self.reader.copy() == self.model
        assert self.bucket.copy() == self.model


@pytest.mark.slow
def test_nested_mutations_of_live_values_match_a_dict_model(kvpio_server):
    machine = type("Machine", (WriteBackMachine,), {"server": kvpio_server})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=30, stateful_step_count=20, deadline=None)
    )


def test_items_and_values_give_live_values(bucket, server):
    bucket.update({"a": {"n": 1}, "b": [1]})
    for key, value in bucket.items():
        if key == "a":
            value["n"] = 2
    for value in bucket.values():
        if isinstance(value, list):
            value.append(2)
    assert server.copy() == {"a": {"n": 2}, "b": [1, 2]}
    assert type(bucket.copy()["a"]) is dict
