"""Random operations on a KVBucket and on a plain dict model, side by side.

The model is a ``dict`` updated with :func:`kvpio_mapping.paths.set_in`,
``delete_in`` and ``get_in``, the single statement of the path rules. Each run
gets a fresh account on the real server of the ``kvpio_server`` fixture.
"""

from __future__ import annotations

import copy
import itertools
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

from kvpio_mapping import InvalidPathError, KVBucket
from kvpio_mapping.paths import MISSING, delete_in, get_in, parse, set_in
from kvpio_mapping.testing import new_account, run_server

SEGMENTS = st.sampled_from(["a", "1", "2"])
TOP_KEYS = st.sampled_from(["a", "b", "1"])
PATHS = st.builds(
    lambda top, rest: "/".join([top, *rest]), TOP_KEYS, st.lists(SEGMENTS, max_size=2)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(SEGMENTS, children, max_size=3)
    ),
    max_leaves=6,
)
ABSENT = "<absent>"
KEY = "hosts-key"


def every_path(data: dict[str, Any]) -> list[str]:
    """Every path that leads to a value in ``data``."""
    found: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        found.append(prefix)
        if type(value) is dict:
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif type(value) is list:
            for position, item in enumerate(value, 1):
                walk(f"{prefix}/{position}", item)

    for key, value in data.items():
        walk(key, value)
    return found


def outcome(call):
    try:
        return "returned", call()
    except KeyError:
        return "raised", KeyError
    except ValueError:
        return "raised", ValueError


class BucketMachine(RuleBasedStateMachine):
    """Set ``server`` and ``ttl`` in a subclass, and ``hosts`` to spread the calls over several.

    With hosts, each use of :attr:`bucket` is a client of the next host in turn,
    so every step reads back through another host what one host wrote.
    """

    server: Any = None
    hosts: tuple[Any, ...] = ()
    ttl: float = 5.0

    def __init__(self) -> None:
        super().__init__()
        account = new_account(self.server)
        self.buckets = [
            KVBucket(host.url, account.api_key, ttl=self.ttl) for host in self.hosts
        ] or [KVBucket(account.url, account.api_key, ttl=self.ttl)]
        self.turns = itertools.count()
        # Checks through a second, uncached client leave the bucket's cache as the rules made it.
        self.server_view = KVBucket(account.url, account.api_key, ttl=0)
        self.model: dict[str, Any] = {}
        self.seen: set[str] = set()

    @property
    def bucket(self) -> KVBucket:
        return self.buckets[next(self.turns) % len(self.buckets)]

    def model_set(self, path: str, value: Any) -> bool:
        """Apply a write to the model; False (model unchanged) where the bucket must refuse it."""
        try:
            set_in(self.model, parse(path), copy.deepcopy(value))
        except InvalidPathError:
            return False
        return True

    def model_get(self, path: str) -> Any:
        found = get_in(self.model, parse(path))
        return ABSENT if found is MISSING else copy.deepcopy(found)

    @rule(path=PATHS, value=VALUES)
    def set(self, path: str, value: Any) -> None:
        if self.model_set(path, value):
            self.bucket[path] = value
        else:
            with pytest.raises(ValueError):
                self.bucket[path] = value

    @rule(root=PATHS, key=SEGMENTS, value=VALUES)
    def set_through_a_view(self, root: str, key: str, value: Any) -> None:
        view = self.bucket.view(root)
        if self.model_set(f"{root}/{key}", value):
            view[key] = value
        else:
            with pytest.raises(ValueError):
                view[key] = value

    @rule(path=PATHS)
    def get(self, path: str) -> None:
        expected = self.model_get(path)
        assert self.bucket.get(path, ABSENT) == expected
        assert outcome(lambda: self.bucket[path]) == (
            ("raised", KeyError) if expected == ABSENT else ("returned", expected)
        )

    @invariant()
    def every_path_reads_as_in_the_model(self) -> None:
        """Read every path that ever held a value, deepest first: each gets its own cache entry."""
        self.seen.update(every_path(self.model))
        for path in sorted(self.seen, key=lambda p: -p.count("/")):
            assert self.bucket.get(path, ABSENT) == self.model_get(path), path

    @rule(path=PATHS)
    def contains(self, path: str) -> None:
        assert (path in self.bucket) == (self.model_get(path) != ABSENT)

    @rule(path=PATHS)
    def delete(self, path: str) -> None:
        existed = delete_in(self.model, parse(path))
        assert outcome(lambda: self.bucket.__delitem__(path)) == (
            ("returned", None) if existed else ("raised", KeyError)
        )

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_a_stored_path(self, data: st.DataObject) -> None:
        self.delete(data.draw(st.sampled_from(every_path(self.model)), label="path"))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), value=VALUES)
    def set_a_stored_path(self, data: st.DataObject, value: Any) -> None:
        self.set(data.draw(st.sampled_from(every_path(self.model)), label="path"), value)

    @rule(path=PATHS)
    def delete_if_unchanged(self, path: str) -> None:
        bucket = self.bucket
        if self.model_get(path) == ABSENT:
            with pytest.raises(KeyError):
                bucket.versioned(path)
            return
        assert bucket.delete_if(path, bucket.versioned(path).etag)
        delete_in(self.model, parse(path))

    @rule(path=PATHS, written=PATHS, value=VALUES)
    def transact_delete_then_set(self, path: str, written: str, value: Any) -> None:
        def fn(tx: Any) -> None:
            if path in tx:
                del tx[path]
            tx[written] = value

        before = copy.deepcopy(self.model)
        delete_in(self.model, parse(path))
        if self.model_set(written, value):
            self.bucket.transact(fn)
        else:
            self.model = before
            with pytest.raises(ValueError):
                self.bucket.transact(fn)

    @rule(path=PATHS, default=st.none() | st.just("default"))
    def pop(self, path: str, default: Any) -> None:
        expected = self.model_get(path)
        delete_in(self.model, parse(path))
        if default is None:
            assert outcome(lambda: self.bucket.pop(path)) == (
                ("raised", KeyError) if expected == ABSENT else ("returned", expected)
            )
        else:
            assert self.bucket.pop(path, default) == (default if expected == ABSENT else expected)

    @rule()
    def popitem(self) -> None:
        expected = outcome(self.model.popitem)
        assert outcome(self.bucket.popitem) == expected

    @rule(path=PATHS, value=VALUES)
    def setdefault(self, path: str, value: Any) -> None:
        found = self.model_get(path)
        if found != ABSENT:
            assert self.bucket.setdefault(path, value) == found
        elif self.model_set(path, value):
            assert self.bucket.setdefault(path, value) == value
        else:
            with pytest.raises(ValueError):
                self.bucket.setdefault(path, value)

    @rule(pairs=st.lists(st.tuples(PATHS, VALUES), min_size=1, max_size=4))
    def update(self, pairs: list[tuple[str, Any]]) -> None:
        before = copy.deepcopy(self.model)
        if all(self.model_set(path, value) for path, value in pairs):
            self.bucket.update(pairs)
        else:
            self.model = before
            with pytest.raises(ValueError):
                self.bucket.update(pairs)

    @rule(go=st.integers(0, 9))
    def clear(self, go: int) -> None:
        if go == 0:
            self.bucket.clear()
            self.model.clear()

    @invariant()
    def the_server_holds_the_model(self) -> None:
        assert list(self.server_view) == list(self.model)
        assert self.server_view.copy() == self.model

    @rule(path=PATHS)
    def lengths(self, path: str) -> None:
        """``len`` and ``bool`` of the bucket and of a view are ``len`` of the model's."""
        found = self.model_get(path)
        expected = len(found) if type(found) in (dict, list) else 0
        assert len(self.bucket.view(path)) == expected
        assert len(self.bucket) == len(self.model)
        assert bool(self.bucket) == bool(self.model)

    @rule()
    def whole_content(self) -> None:
        bucket, model = self.bucket, self.model
        assert len(bucket) == len(model)
        assert list(bucket) == list(model)
        assert list(bucket.keys()) == list(model)
        assert dict(bucket) == model
        assert bucket == model


@pytest.mark.slow
@pytest.mark.parametrize("ttl", [5.0, 0], ids=["cached", "uncached"])
def test_random_operations_keep_the_bucket_equal_to_a_dict_model(kvpio_server, ttl):
    machine = type("Machine", (BucketMachine,), {"server": kvpio_server, "ttl": ttl})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None),
    )


@pytest.mark.slow
def test_random_operations_through_three_hosts_on_postgresql_keep_a_dict_model(
    kvpio_postgres_db: str,
) -> None:
    with (
        run_server(db=kvpio_postgres_db, api_key=KEY, workers=2) as first,
        run_server(db=kvpio_postgres_db, api_key=KEY) as second,
        run_server(db=kvpio_postgres_db, api_key=KEY) as third,
    ):
        machine = type(
            "Machine",
            (BucketMachine,),
            {"server": first, "hosts": (first, second, third), "ttl": 0},
        )
        run_state_machine_as_test(
            machine,
            settings=settings(max_examples=10, stateful_step_count=30, deadline=None),
        )
