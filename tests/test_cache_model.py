"""Random sequences of stores, lookups, invalidations and evictions on a PathCache
and on a model cache, side by side.

The model states the cache's rules plainly: two LRU ``OrderedDict`` tables, and
an invalidation that scans every key. The cache must answer as the model does,
hold the same paths in the same order, and keep its tree of paths exactly the
stored paths and their ancestors (nothing left behind by an eviction or a drop).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from conftest import Clock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvpio_mapping.cache import NOT_CACHED, PathCache, _Recent, _unpadded
from kvpio_mapping.paths import MISSING, get_in

TTL, MISSING_TTL = 10.0, 1.0
SEGMENTS = st.sampled_from(["a", "b", "1", "0", "01"])
PATHS = st.lists(SEGMENTS, min_size=1, max_size=3).map("/".join)
VALUES = st.sampled_from([7, {"a": 1, "b": {"1": 2}}, [3, 4], {"01": 5}, MISSING])


class ModelCache:
    """The cache's rules without an index: what the tree must not change."""

    def __init__(self, maxsize: int, clock: Clock) -> None:
        self.maxsize = maxsize
        self.clock = clock
        self.live = False
        self.generation = 0
        self.entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.lengths: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def now(self) -> float:
        return -math.inf if self.live else self.clock()

    def put(self, table: OrderedDict[str, tuple[float, Any]], path: str, entry: Any) -> None:
        if _unpadded(path) is None:
            table[path] = entry
            table.move_to_end(path)
            if len(table) > self.maxsize:
                table.popitem(last=False)

    def touch(self, table: OrderedDict[str, tuple[float, Any]], path: str) -> Any:
        entry = table.get(path)
        if entry is not None:
            table.move_to_end(path)
        return entry

    def find(self, path: str) -> Any:
        ancestor = path
        while True:
            entry = self.touch(self.entries, ancestor)
            if entry is not None and entry[0] > self.now():
                rest = path[len(ancestor) + 1 :]
                return entry[1] if ancestor == path else get_in(entry[1], tuple(rest.split("/")))
            if "/" not in ancestor:
                return NOT_CACHED
            ancestor = ancestor.rsplit("/", 1)[0]

    def length(self, path: str) -> Any:
        entry = self.touch(self.lengths, path)
        if entry is not None and entry[0] > self.now():
            return entry[1]
        found = self.find(path) if path else NOT_CACHED
        if found is NOT_CACHED:
            return NOT_CACHED
        return len(found) if type(found) in (dict, list) else 0

    def invalidate(self, path: str | None) -> None:
        self.generation += 1
        if path is None:
            self.entries.clear()
            self.lengths.clear()
            return
        path = _unpadded(path) or path
        self.lengths.pop("", None)
        for table in (self.entries, self.lengths):
            for key in list(table):
                if key == path or path.startswith(key + "/") or key.startswith(path + "/"):
                    del table[key]


class CacheAgainstModel(RuleBasedStateMachine):
    @initialize(maxsize=st.integers(1, 6))
    def start(self, maxsize: int) -> None:
        self.clock = Clock()
        self.cache = PathCache(TTL, maxsize, missing_ttl=MISSING_TTL, timer=self.clock)
        self.model = ModelCache(maxsize, self.clock)

    @rule(path=PATHS, value=VALUES)
    def store(self, path: str, value: Any) -> None:
        self.cache.store(path, value, self.cache.generation)
        ttl = MISSING_TTL if value is MISSING else TTL
        self.model.put(self.model.entries, path, (self.clock() + ttl, value))

    @rule(path=PATHS, value=VALUES)
    def store_after_a_write(self, path: str, value: Any) -> None:
        self.cache.store(path, value, self.cache.generation - 1)

    @rule(pairs=st.lists(st.tuples(PATHS, VALUES), max_size=4))
    def store_many(self, pairs: list[tuple[str, Any]]) -> None:
        self.cache.store_many(iter(pairs), self.cache.generation)
        for path, value in pairs:
            ttl = MISSING_TTL if value is MISSING else TTL
            self.model.entries[path] = (self.clock() + ttl, value)
            self.model.entries.move_to_end(path)
            if len(self.model.entries) > self.model.maxsize:
                self.model.entries.popitem(last=False)

    @rule(path=st.just("") | PATHS, length=st.integers(0, 3))
    def store_length(self, path: str, length: int) -> None:
        self.cache.store_length(path, length, self.cache.generation)
        self.model.put(self.model.lengths, path, (self.clock() + TTL, length))

    @rule(path=PATHS)
    def lookup(self, path: str) -> None:
        assert self.cache.lookup(path) == self.model.find(path)

    @rule(path=PATHS)
    def exact(self, path: str) -> None:
        entry = self.model.touch(self.model.entries, path)
        expected = entry[1] if entry is not None and entry[0] > self.model.now() else NOT_CACHED
        assert self.cache.exact(path) == expected

    @rule(path=st.just("") | PATHS)
    def length(self, path: str) -> None:
        assert self.cache.length(path) == self.model.length(path)

    @rule(path=st.none() | PATHS)
    def invalidate(self, path: str | None) -> None:
        self.cache.invalidate(path)
        self.model.invalidate(path)

    @rule(seconds=st.sampled_from([0.5, 2.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def toggle_live(self) -> None:
        self.cache.live = self.model.live = not self.model.live

    @invariant()
    def same_paths_in_the_same_order(self) -> None:
        assert list(self.cache._entries.items()) == [
            (path, (expires, value, None)) for path, (expires, value) in self.model.entries.items()
        ]
        assert list(self.cache._lengths.items()) == [
            (path, (expires, value, None)) for path, (expires, value) in self.model.lengths.items()
        ]
        assert self.cache.generation == self.model.generation
        now = self.model.now()
        held = [*self.model.entries.values(), *self.model.lengths.values()]
        assert self.cache.info().currsize == sum(1 for expires, _ in held if expires > now)

    @invariant()
    def tree_holds_the_stored_paths_and_their_ancestors(self) -> None:
        for table in (self.cache._entries, self.cache._lengths):
            assert table._children == tree_of(table)


def tree_of(table: _Recent) -> dict[str, set[str]]:
    """Each stored path and each ancestor of one, under its parent."""
    tree: dict[str, set[str]] = {}
    for path in table:
        while path:
            parent = path.rpartition("/")[0]
            tree.setdefault(parent, set()).add(path)
            path = parent
    return tree


TestCacheAgainstModel = CacheAgainstModel.TestCase
TestCacheAgainstModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
