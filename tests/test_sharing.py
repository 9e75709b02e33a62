"""Safe sharing from the client: atomic operations, conditional writes, transactions."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvpio_mapping import (
    ConflictError,
    InvalidPathError,
    KVBucket,
    RequestError,
    Transaction,
    TransactionConflictError,
    Versioned,
    values,
)
from kvpio_mapping.paths import MISSING, delete_in, get_in, set_in
from kvpio_mapping.testing import RunningServer, TestAccount, new_account, run_server

Counter = Callable[[Any], Requests]


@pytest.fixture
def bucket(kvpio_account: TestAccount) -> KVBucket:
    return KVBucket(kvpio_account.url, kvpio_account.api_key)


@pytest.fixture
def other(kvpio_account: TestAccount) -> KVBucket:
    """A second client of the same account, with a cache of its own."""
    return KVBucket(kvpio_account.url, kvpio_account.api_key)


# atomic operations


def test_increment_returns_the_new_value_in_one_request(
    bucket: KVBucket, count_requests: Counter
) -> None:
    requests = count_requests(bucket)
    assert bucket.increment("hits") == 1
    assert bucket.increment("hits", 10) == 11
    assert bucket.increment("hits", -0.5) == 10.5
    assert requests.count == 3
    assert bucket["hits"] == 10.5
    assert requests.count == 3


def test_increment_of_a_string_is_a_conflict_and_changes_nothing(bucket: KVBucket) -> None:
    bucket["s"] = "text"
    with pytest.raises(ConflictError, match="not a number") as caught:
        bucket.increment("s")
    assert isinstance(caught.value, RequestError) and caught.value.status == 409
    assert bucket["s"] == "text"


@pytest.mark.parametrize("by", ["1", True, None, float("nan")])
def test_increment_by_a_non_number_sends_nothing(
    bucket: KVBucket, count_requests: Counter, by: Any
) -> None:
    requests = count_requests(bucket)
    with pytest.raises((TypeError, ValueError)):
        bucket.increment("n", by)
    assert requests.count == 0


def test_append_returns_the_position(bucket: KVBucket) -> None:
    assert bucket.append("log", "a") == 1
    assert bucket.append("log", {"b": 2}) == 2
    assert bucket["log"] == ["a", {"b": 2}]
    assert bucket["log/2/b"] == 2
    bucket["o"] = {}
    with pytest.raises(ConflictError):
        bucket.append("o", 1)


def test_merge_sets_members_shallowly(bucket: KVBucket) -> None:
    bucket["cfg"] = {"a": 1, "b": {"c": 1}}
    assert bucket["cfg"]["a"] == 1
    bucket.merge("cfg", {"b": {"d": 2}, "e": 3})
    assert bucket["cfg"] == {"a": 1, "b": {"d": 2}, "e": 3}


def test_operations_on_a_view_use_its_paths(bucket: KVBucket) -> None:
    view = bucket.view("stats")
    view.increment("n", 2)
    assert view.append("seen", "x") == 1
    assert bucket["stats"] == {"n": 2, "seen": ["x"]}


# conditional writes


def test_versioned_read_and_conditional_write(bucket: KVBucket, other: KVBucket) -> None:
    bucket["doc"] = {"v": 1}
    read = bucket.versioned("doc")
    assert read == Versioned({"v": 1}, read.etag)
    assert bucket.set_if("doc", {"v": 2}, read.etag)
    assert other["doc"] == {"v": 2}
    assert not bucket.set_if("doc", {"v": 3}, read.etag)
    assert other.versioned("doc").value == {"v": 2}


def test_stale_write_changes_nothing_and_the_cache_learns_the_current_value(
    bucket: KVBucket, other: KVBucket, count_requests: Counter
) -> None:
    bucket["doc"] = 1
    stale = bucket.versioned("doc")
    other["doc"] = 2
    requests = count_requests(bucket)
    assert not bucket.set_if("doc", 3, stale.etag)
    assert not bucket.delete_if("doc", stale.etag)
    assert requests.count == 2
    current = bucket.versioned("doc")
    assert current.value == 2
    assert requests.count == 2
    assert bucket.delete_if("doc", current.etag)
    assert "doc" not in other


def test_set_if_absent(bucket: KVBucket) -> None:
    assert bucket.set_if("lock", "me", None)
    assert not bucket.set_if("lock", "you", None)
    assert bucket["lock"] == "me"


def test_delete_if_of_a_list_item_leaves_no_stale_cached_item(
    bucket: KVBucket, other: KVBucket
) -> None:
    bucket["l"] = ["x", "y", "z"]
    assert (bucket["l/2"], bucket["l/3"]) == ("y", "z")
    assert bucket.delete_if("l/1", bucket.versioned("l/1").etag)
    assert [bucket.get(f"l/{n}") for n in (1, 2, 3)] == ["y", "z", None]
    assert other["l"] == ["y", "z"]


def test_versioned_of_a_missing_key_raises_key_error(bucket: KVBucket) -> None:
    with pytest.raises(KeyError):
        bucket.versioned("nothing")


def test_setdefault_returns_what_won_without_a_second_read(
    bucket: KVBucket, other: KVBucket, count_requests: Counter
) -> None:
    assert "k" not in bucket  # caches "missing"
    other["k"] = "theirs"
    requests = count_requests(bucket)
    assert bucket.setdefault("k", "mine") == "theirs"
    assert requests.sent == [("POST", "bucket/k")]
    other.pop("k")
    bucket.invalidate("k")
    assert bucket.setdefault("k", "mine") == "mine"
    assert other["k"] == "mine"


# transactions


def move(tx: Transaction, source: str, target: str, units: int) -> None:
    tx[source] = tx[source] - units
    tx[target] = tx.get(target, 0) + units


def test_transact_reads_and_writes_atomically(bucket: KVBucket) -> None:
    bucket.update({"a": 10, "b": 0})
    bucket.transact(lambda tx: move(tx, "a", "b", 3))
    assert bucket.copy() == {"a": 7, "b": 3}


def test_transact_returns_what_the_function_returns(bucket: KVBucket) -> None:
    bucket["n"] = 4
    assert bucket.transact(lambda tx: tx["n"] * 2) == 8


def test_uncontended_transaction_on_cached_data_costs_one_request(
    bucket: KVBucket, count_requests: Counter
) -> None:
    bucket.update({"a": 10, "b": 0})
    bucket.transact(lambda tx: move(tx, "a", "b", 1))
    requests = count_requests(bucket)
    for _ in range(3):
        bucket.transact(lambda tx: move(tx, "a", "b", 1))
    assert requests.sent == [("POST", "bucket/?commit=true")] * 3
    assert bucket.copy() == {"a": 6, "b": 4}


def test_conflict_reruns_the_function_on_the_values_the_refusal_carried(
    bucket: KVBucket, other: KVBucket, count_requests: Counter
) -> None:
    bucket.update({"a": 10, "b": 0})
    bucket.transact(lambda tx: move(tx, "a", "b", 1))  # a and b now cached
    other["a"] = 100
    requests = count_requests(bucket)
    seen: list[int] = []

    def transfer(tx: Transaction) -> None:
        seen.append(tx["a"])
        move(tx, "a", "b", 1)

    bucket.transact(transfer)
    assert seen == [9, 100]
    assert requests.sent == [("POST", "bucket/?commit=true")] * 2
    assert other.copy() == {"a": 99, "b": 2}


def test_an_exception_in_the_function_writes_nothing(
    bucket: KVBucket, count_requests: Counter
) -> None:
    bucket["a"] = 1
    requests = count_requests(bucket)

    def fails(tx: Transaction) -> None:
        tx["a"] = 2
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        bucket.transact(fails)
    assert requests.count == 0
    assert bucket["a"] == 1


def test_spent_retries_raise_and_write_nothing(bucket: KVBucket, other: KVBucket) -> None:
    bucket["n"] = 0
    calls = []

    def always_beaten(tx: Transaction) -> None:
        value = tx["n"]
        calls.append(value)
        other["n"] = value + 1000  # a rival write after each read
        tx["n"] = value + 1

    with pytest.raises(TransactionConflictError, match="3 attempts") as caught:
        bucket.transact(always_beaten, retries=2)
    assert caught.value.attempts == 3
    assert calls == [0, 1000, 2000]
    assert other["n"] == 3000


def test_transaction_sees_its_own_writes(bucket: KVBucket) -> None:
    bucket["doc"] = {"a": 1, "list": [1]}

    def body(tx: Transaction) -> list[Any]:
        tx["doc/b"] = 2
        tx.increment("doc/a", 5)
        tx.append("doc/list", 2)
        del tx["doc/list/1"]
        tx.increment("count")
        return [tx["doc"], tx["doc/a"], "count" in tx, tx.get("gone")]

    seen = bucket.transact(body)
    assert seen == [{"a": 6, "list": [2], "b": 2}, 6, True, None]
    assert bucket["doc"] == {"a": 6, "list": [2], "b": 2}
    assert bucket["count"] == 1


def test_delete_of_a_missing_key_in_a_transaction_raises_key_error(bucket: KVBucket) -> None:
    def body(tx: Transaction) -> None:
        del tx["nothing"]

    with pytest.raises(KeyError):
        bucket.transact(body)


@pytest.mark.parametrize("key", [1, None, "", "a//b", ".."], ids=repr)
def test_a_transactions_read_of_a_key_that_can_never_exist_answers_as_dict_does(
    bucket: KVBucket, key: Any
) -> None:
    def fn(tx: Transaction) -> list[Any]:
        with pytest.raises(KeyError):
            tx[key]
        with pytest.raises(KeyError):
            del tx[key]
        with pytest.raises(TypeError, match="unhashable"):
            tx.get([key])
        return [tx.get(key, "dflt"), key in tx, tx.pop(key, "dflt")]

    assert bucket.transact(fn) == ["dflt", False, "dflt"]


def test_a_transaction_that_only_reads_sends_no_commit(
    bucket: KVBucket, count_requests: Counter
) -> None:
    bucket["a"] = 1
    requests = count_requests(bucket)
    assert bucket.transact(lambda tx: tx["a"]) == 1
    assert requests.sent == [("GET", "bucket/a")]


def test_transactional_decorator(bucket: KVBucket) -> None:
    bucket.update({"a": 5, "b": 5})

    @bucket.transactional
    def transfer(tx: Transaction, units: int) -> int:
        move(tx, "a", "b", units)
        return units

    @bucket.transactional(retries=1)
    def total(tx: Transaction) -> int:
        return int(tx["a"] + tx["b"])

    assert transfer(2) == 2
    assert transfer.__name__ == "transfer"
    assert total() == 10
    assert bucket.copy() == {"a": 3, "b": 7}


def test_reads_below_a_value_read_are_checked_through_it(bucket: KVBucket, other: KVBucket) -> None:
    bucket["users"] = {"ann": {"credits": 1}}
    bucket["users"]  # caches the whole object

    def spend(tx: Transaction) -> None:
        tx["users/ann/credits"] = tx["users/ann/credits"] - 1

    other["users/ann/credits"] = 5
    bucket.transact(spend)
    assert other["users/ann/credits"] == 4


def test_transaction_on_a_view(bucket: KVBucket) -> None:
    view = bucket.view("bank")
    view.update({"a": 1, "b": 1})
    view.transact(lambda tx: move(tx, "a", "b", 1))
    assert bucket["bank"] == {"a": 0, "b": 2}


def test_writes_after_the_function_returned_are_refused(bucket: KVBucket) -> None:
    kept: list[Transaction] = []
    bucket.transact(kept.append)
    with pytest.raises(RuntimeError):
        kept[0]["late"] = 1


# several processes against a server with two workers


def _incrementer(bucket: KVBucket, count: int) -> None:
    for _ in range(count):
        bucket.increment("counter")


def _transferrer(bucket: KVBucket, seed: int, count: int) -> None:
    for n in range(count):
        source, target = ("alice", "bob") if (n + seed) % 2 else ("bob", "alice")
        bucket.transact(
            lambda tx, s=source, t=target: move(tx, f"balances/{s}", f"balances/{t}", 3)
        )


def _appender_merger_and_swapper(bucket: KVBucket, worker: int, count: int) -> None:
    for n in range(count):
        bucket.append("log", [worker, n])
        bucket.merge("seen", {f"w{worker}n{n}": True})
        while True:
            read = bucket.versioned("swapped")
            if bucket.set_if("swapped", read.value + 1, read.etag):
                break


def _run(target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=arguments) for arguments in args]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0


@pytest.fixture(scope="module")
def two_workers() -> Iterator[RunningServer]:
    with run_server(workers=2) as server:
        yield server


@pytest.fixture
def shared(two_workers: RunningServer) -> KVBucket:
    """A fresh account on the server with two workers."""
    account = new_account(two_workers)
    return KVBucket(account.url, account.api_key)


@pytest.mark.slow
def test_processes_incrementing_one_key_lose_nothing(shared: KVBucket) -> None:
    _run(_incrementer, [(shared, 200)] * 4)
    assert shared.get("counter") == 800


@pytest.mark.slow
def test_processes_appending_merging_and_swapping_lose_nothing(shared: KVBucket) -> None:
    shared["swapped"] = 0
    _run(_appender_merger_and_swapper, [(shared, worker, 50) for worker in range(4)])
    final = KVBucket(shared.url, shared._transport.api_key, ttl=0).copy()
    for worker in range(4):
        assert [n for w, n in final["log"] if w == worker] == list(range(50))
    assert len(final["log"]) == 200
    assert len(final["seen"]) == 200
    assert final["swapped"] == 200


@pytest.mark.slow
def test_processes_moving_units_between_balances_keep_the_sum(shared: KVBucket) -> None:
    shared["balances"] = {"alice": 1000, "bob": 1000}
    _run(_transferrer, [(shared, seed, 100) for seed in range(4)])
    balances = KVBucket(shared.url, shared._transport.api_key, ttl=0)["balances"]
    assert balances["alice"] + balances["bob"] == 2000
    assert balances == {"alice": 1000, "bob": 1000}


def test_stale_if_match_on_two_workers_changes_nothing_and_returns_the_current_value(
    shared: KVBucket,
) -> None:
    rival = pickle.loads(pickle.dumps(shared))
    shared["doc"] = {"v": 1}
    stale = shared.versioned("doc")
    for v in range(2, 12):  # spread over both workers' connections
        rival["doc"] = {"v": v}
    assert not shared.set_if("doc", {"v": 0}, stale.etag)
    assert not shared.delete_if("doc", stale.etag)
    assert shared.versioned("doc").value == {"v": 11}
    assert rival.transact(lambda tx: tx["doc"]) == {"v": 11}


def test_commit_with_one_failing_check_on_two_workers_applies_nothing(shared: KVBucket) -> None:
    rival = pickle.loads(pickle.dumps(shared))
    shared.update({"a": 1, "b": 1, "c": 1})

    def touch_all(tx: Transaction) -> None:
        for key in ("a", "b", "c"):
            tx[key] = tx[key] + 10
        tx.append("log", "done")
        if tx["a"] == 11:
            rival["b"] = 5  # changes one of the three reads before the commit

    with pytest.raises(TransactionConflictError):
        shared.transact(touch_all, retries=0)
    assert rival.copy() == {"a": 1, "b": 5, "c": 1}


# random transactions against a dict model

KEYS = st.sampled_from(["a", "b", "a/x", "a/y", "l", "l/1", "l/2", "n"])
SMALL = st.one_of(st.integers(-3, 3), st.sampled_from(["s", None]), st.just([1]), st.just({"x": 1}))
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), KEYS, st.none()),
        st.tuples(st.just("set"), KEYS, SMALL),
        st.tuples(st.just("del"), KEYS, st.none()),
        st.tuples(st.just("increment"), KEYS, st.integers(-2, 2)),
        st.tuples(st.just("append"), KEYS, SMALL),
    ),
    max_size=8,
)


def _step(data: Any, kind: str, key: str, value: Any) -> Any:
    """One step on a mapping (a Transaction, or the model): what it returned, or the error type."""
    try:
        if kind == "get":
            return data.get(key, "<absent>")
        if kind == "set":
            data[key] = value
        elif kind == "del":
            del data[key]
        elif kind == "increment":
            data.increment(key, value)
        else:
            data.append(key, value)
    except (KeyError, ConflictError, InvalidPathError) as exc:
        return type(exc)
    return None


class Model:
    """A bucket as a plain dict, with the transaction operations spelled out plainly."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, key: str, default: Any) -> Any:
        found = get_in(self.data, tuple(key.split("/")))
        return default if found is MISSING else values.copy(found)

    def __setitem__(self, key: str, value: Any) -> None:
        set_in(self.data, tuple(key.split("/")), values.copy(value))

    def __delitem__(self, key: str) -> None:
        if not delete_in(self.data, tuple(key.split("/"))):
            raise KeyError(key)

    def increment(self, key: str, by: int) -> None:
        found = self.get(key, 0)
        if type(found) is not int:
            raise ConflictError("not a number", 409)
        self[key] = found + by

    def append(self, key: str, value: Any) -> None:
        found = self.get(key, [])
        if type(found) is not list:
            raise ConflictError("not a list", 409)
        self[key] = [*found, value]


@pytest.fixture(scope="module")
def random_bucket(kvpio_server: RunningServer) -> KVBucket:
    account = new_account(kvpio_server)
    return KVBucket(account.url, account.api_key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.dictionaries(st.sampled_from(["a", "l", "n"]), SMALL, max_size=3), steps=STEPS)
def test_random_transactions_agree_with_a_dict(
    random_bucket: KVBucket, start: dict[str, Any], steps: list[tuple[str, str, Any]]
) -> None:
    random_bucket.clear()
    if start:
        random_bucket.update(start)
    model = Model(values.copy(start))
    expected = [_step(model, *step) for step in steps]
    if any(isinstance(seen, type) for seen in expected):
        event("refused")
        return  # a step the server would refuse: the commit's own tests cover those
    event("committed")
    seen = random_bucket.transact(lambda tx: [_step(tx, *step) for step in steps])
    assert seen == expected
    assert random_bucket.copy() == model.data


def test_a_transaction_reads_a_list_item_moved_up_by_its_own_delete(bucket: KVBucket) -> None:
    bucket.update({"l": [1]})

    def fn(tx: Any) -> Any:
        tx.increment("l/2", 0)
        del tx["l/1"]
        return tx.get("l/1", "absent")

    assert bucket.transact(fn) == 0
    assert bucket["l"] == [0]


def test_a_transactions_delete_of_a_list_item_leaves_no_stale_cached_item(
    bucket: KVBucket, other: KVBucket
) -> None:
    bucket["l"] = ["x", "y", "z"]
    assert (bucket["l/2"], bucket["l/3"]) == ("y", "z")

    def fn(tx: Any) -> None:
        tx["l/3"] = "w"
        del tx["l/1"]

    bucket.transact(fn)
    assert [bucket.get(f"l/{n}") for n in (1, 2, 3)] == ["y", "w", None]
    assert other["l"] == ["y", "w"]
