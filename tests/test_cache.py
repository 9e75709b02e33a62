"""The path-aware TTL read cache: PathCache on its own, then KVBucket's cache rules.

The bucket-level tests run against the real server of the ``kvpio_server``
fixture; a second, uncached bucket on the same account plays "another client"
and tells the server's truth. Time is a fake clock, never a sleep.
"""

from __future__ import annotations

import pytest
import requests
import responses

from kvpio_mapping import KVBucket, RequestError, TransportError, values
from kvpio_mapping.cache import NOT_CACHED, CacheInfo, PathCache
from kvpio_mapping.paths import MISSING


@pytest.fixture
def cache(clock):
    return PathCache(10.0, 100, missing_ttl=1.0, timer=clock)


@pytest.fixture
def bucket(kvpio_account, clock):
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=10.0, timer=clock)


@pytest.fixture
def other(kvpio_account):
    """Another client of the same account, without a cache: the server's truth."""
    return KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)


@pytest.fixture
def sent(bucket, count_requests):
    return count_requests(bucket)


# PathCache units


def test_tagged_answers_from_the_entry_or_an_ancestor_with_its_etag(cache, clock):
    cache.store("a", {"b": [1, 2]}, cache.generation, '"server-tag"')
    assert cache.tagged("a/b/2") == ("a", {"b": [1, 2]}, '"server-tag"')
    assert cache.tagged("a/b/2", exact=True) is NOT_CACHED
    assert cache.tagged("a/nothing") == ("a", {"b": [1, 2]}, '"server-tag"')
    clock.advance(11)
    assert cache.tagged("a") is NOT_CACHED


def test_tagged_computes_the_tag_of_a_value_stored_without_one(cache):
    cache.store_many(iter([("k", {"x": 1})]), cache.generation)
    assert cache.tagged("k") == ("k", {"x": 1}, values.etag(b'{"x":1}'))
    cache.store("gone", MISSING, cache.generation)
    assert cache.tagged("gone") == ("gone", MISSING, None)


def test_lookup_of_a_path_never_stored_is_not_cached(cache):
    assert cache.lookup("a") is NOT_CACHED


def test_a_stored_value_is_found(cache):
    cache.store("a", {"b": 1}, cache.generation)
    assert cache.lookup("a") == {"b": 1}


def test_a_stored_missing_is_found_as_missing(cache):
    cache.store("a", MISSING, cache.generation)
    assert cache.lookup("a") is MISSING


def test_a_descendant_is_answered_from_a_cached_ancestor(cache):
    cache.store("a", {"b": {"c": [10, {"d": "deep"}]}}, cache.generation)
    assert cache.lookup("a/b/c/1") == 10
    assert cache.lookup("a/b/c/2/d") == "deep"
    assert cache.lookup("a/b/nothing") is MISSING
    assert cache.lookup("a/b/c/3") is MISSING


def test_below_a_cached_scalar_or_missing_is_missing(cache):
    cache.store("s", "text", cache.generation)
    cache.store("m", MISSING, cache.generation)
    assert cache.lookup("s/x") is MISSING
    assert cache.lookup("m/x/y") is MISSING


def test_the_nearest_cached_ancestor_answers(cache):
    cache.store("a", {"b": {"c": "old"}}, cache.generation)
    cache.invalidate("a/b/c")
    cache.store("a/b", {"c": "new"}, cache.generation)
    assert cache.lookup("a/b/c") == "new"


def test_a_path_that_only_shares_a_prefix_is_not_a_descendant(cache):
    cache.store("ab", {"c": 1}, cache.generation)
    assert cache.lookup("a") is NOT_CACHED
    assert cache.lookup("a/b") is NOT_CACHED


def test_a_value_expires_at_ttl(cache, clock):
    cache.store("a", 1, cache.generation)
    clock.advance(9.9)
    assert cache.lookup("a") == 1
    clock.advance(0.2)
    assert cache.lookup("a") is NOT_CACHED


def test_a_missing_entry_expires_at_missing_ttl(cache, clock):
    cache.store("a", MISSING, cache.generation)
    clock.advance(0.9)
    assert cache.lookup("a") is MISSING
    clock.advance(0.2)
    assert cache.lookup("a") is NOT_CACHED


def test_missing_ttl_is_never_longer_than_ttl(clock):
    cache = PathCache(0.5, 10, missing_ttl=1.0, timer=clock)
    cache.store("a", MISSING, cache.generation)
    clock.advance(0.6)
    assert cache.lookup("a") is NOT_CACHED


def test_a_store_with_a_generation_older_than_a_write_is_dropped(cache):
    generation = cache.generation
    cache.invalidate("a")
    cache.store("a", "stale", generation)
    assert cache.lookup("a") is NOT_CACHED


def test_store_many_with_an_old_generation_stores_nothing(cache):
    generation = cache.generation
    cache.invalidate("x")
    cache.store_many(iter([("a", 1), ("b", 2)]), generation)
    assert cache.lookup("a") is NOT_CACHED
    assert cache.lookup("b") is NOT_CACHED


def test_store_many_stores_every_pair(cache):
    cache.store_many(iter([("a", 1), ("b", {"c": 2})]), cache.generation)
    assert cache.lookup("a") == 1
    assert cache.lookup("b/c") == 2


def test_invalidate_drops_the_path_its_ancestors_and_its_descendants(cache):
    generation = cache.generation
    for path in ("a", "a/b", "a/b/c", "a/b/c/d"):
        cache.store(path, {"v": path}, generation)
    cache.invalidate("a/b")
    for path in ("a", "a/b", "a/b/c", "a/b/c/d"):
        assert cache.lookup(path) is NOT_CACHED, path


def test_invalidate_keeps_siblings_and_prefix_lookalikes(cache):
    generation = cache.generation
    for path in ("a/b", "a/c", "a/bc", "ab", "x"):
        cache.store(path, path, generation)
    cache.invalidate("a/b")
    assert [cache.lookup(path) for path in ("a/c", "a/bc", "ab", "x")] == ["a/c", "a/bc", "ab", "x"]


def test_invalidate_without_a_path_drops_everything(cache):
    cache.store("a", 1, cache.generation)
    cache.store("b/c", 2, cache.generation)
    cache.invalidate()
    assert cache.lookup("a") is NOT_CACHED
    assert cache.lookup("b/c") is NOT_CACHED
    assert cache.info().currsize == 0


def test_writing_invalidates_even_when_the_write_fails(cache):
    cache.store("a", 1, cache.generation)
    with pytest.raises(RuntimeError), cache.writing("a"):
        raise RuntimeError("the write failed")
    assert cache.lookup("a") is NOT_CACHED


@pytest.mark.parametrize(("ttl", "maxsize"), [(0, 100), (10.0, 0)])
def test_ttl_or_maxsize_zero_turns_the_cache_off(clock, ttl, maxsize):
    cache = PathCache(ttl, maxsize, timer=clock)
    assert not cache.enabled
    cache.store("a", 1, cache.generation)
    cache.store_many(iter([("b", 2)]), cache.generation)
    assert cache.lookup("a") is NOT_CACHED
    assert cache.lookup("b") is NOT_CACHED


def test_a_count_is_found_until_ttl(cache, clock):
    g = cache.generation
    cache.store_length("", 3, g)
    cache.store_length("a", 2, g)
    assert (cache.length(""), cache.length("a"), cache.length("b")) == (3, 2, NOT_CACHED)
    clock.advance(10.0)
    assert cache.length("") is NOT_CACHED and cache.length("a") is NOT_CACHED


def test_a_count_is_answered_from_a_cached_value_at_or_above_its_path(cache):
    g = cache.generation
    cache.store("a", {"o": {"x": 1, "y": 2}, "l": [1], "s": "t"}, g)
    cache.store("m", MISSING, g)
    lengths = [cache.length(path) for path in ("a", "a/o", "a/l", "a/s", "a/none", "m", "")]
    assert lengths == [3, 2, 1, 0, 0, 0, NOT_CACHED]


def test_a_write_drops_the_counts_of_its_path_its_ancestors_the_bucket_and_below(cache):
    g = cache.generation
    for path in ("", "a", "a/b", "a/b/c", "a/b/c/d", "a/x", "z"):
        cache.store_length(path, 1, g)
    cache.invalidate("a/b/c")
    kept = {
        path for path in ("", "a", "a/b", "a/b/c", "a/b/c/d", "a/x", "z") if cache.length(path) == 1
    }
    assert kept == {"a/x", "z"}
    cache.store_length("", 1, cache.generation)
    cache.invalidate()
    assert cache.length("") is NOT_CACHED and cache.length("z") is NOT_CACHED


def test_a_count_with_a_generation_older_than_a_write_is_dropped(cache):
    g = cache.generation
    cache.invalidate("anything")
    cache.store_length("", 5, g)
    assert cache.length("") is NOT_CACHED


def test_info_counts_hits_misses_and_size(cache):
    cache.store("a", {"b": 1}, cache.generation)
    cache.lookup("a")
    cache.lookup("a/b")
    cache.lookup("x")
    assert cache.info() == CacheInfo(hits=2, misses=1, maxsize=100, currsize=1)


def test_info_size_does_not_count_expired_entries(cache, clock):
    cache.store("a", 1, cache.generation)
    clock.advance(11)
    assert cache.info().currsize == 0


# KVBucket: reads


def test_a_repeated_read_sends_one_request(bucket, other, sent):
    other["a"] = {"b": 1}
    assert bucket["a"] == {"b": 1}
    assert bucket["a"] == {"b": 1}
    assert bucket.get("a") == {"b": 1}
    assert "a" in bucket
    assert sent.count == 1


def test_a_nested_read_is_answered_from_a_cached_ancestor(bucket, other, sent):
    other["a"] = {"b": {"c": [1, 2]}}
    bucket["a"]
    sent.reset()
    assert bucket["a/b/c"] == [1, 2]
    assert bucket["a/b/c/2"] == 2
    assert "a/b/x" not in bucket
    with pytest.raises(KeyError):
        bucket["a/b/c/3"]
    assert sent.count == 0


def test_a_missing_key_is_cached_briefly(bucket, other, clock, sent):
    with pytest.raises(KeyError):
        bucket["k"]
    other["k"] = "v"
    clock.advance(0.5)
    assert "k" not in bucket
    assert sent.count == 1
    clock.advance(0.6)
    assert bucket["k"] == "v"
    assert sent.count == 2


def test_a_cached_value_is_served_until_ttl_then_refetched(bucket, other, clock):
    other["k"] = "old"
    assert bucket["k"] == "old"
    other["k"] = "new"
    clock.advance(9.9)
    assert bucket["k"] == "old"
    clock.advance(0.2)
    assert bucket["k"] == "new"


def test_ttl_zero_sends_every_read(kvpio_account, other, count_requests):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    sent = count_requests(bucket)
    other["k"] = {"a": 1}
    for _ in range(3):
        assert bucket["k/a"] == 1
    assert sent.count == 3
    other["k"] = {"a": 2}
    assert bucket["k/a"] == 2
    assert bucket.cache_info().currsize == 0


def test_cache_info_reports_hits_misses_and_size(bucket, other):
    other["a"] = 1
    bucket["a"]
    bucket["a"]
    bucket.get("b")
    info = bucket.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 2, 2)


# KVBucket: writes leave nothing stale (p, an ancestor of p, a descendant of p)

START = {"a": {"b": {"c": 1, "d": [1, 2]}, "e": 3}, "z": 0}
PRIMED = ("a/b/c", "a/b/d/2", "a/b", "a", "z", "a/e")


def prime(bucket: KVBucket) -> None:
    """Cache entries for a path, its descendants and its ancestor, deepest first."""
    for path in PRIMED:
        bucket.get(path)


def assert_fresh(bucket: KVBucket, other: KVBucket) -> None:
    truth = other.copy()
    for path in (*PRIMED, "a/b/new"):
        assert bucket.get(path, "<missing>") == other.get(path, "<missing>"), path
    assert bucket.copy() == truth


def _view_write(bucket):
    bucket.view("a")["b"] = {"new": 1}


def _view_nested_write(bucket):
    bucket.view("a/b")["new"] = 1


def _view_delete(bucket):
    del bucket.view("a")["b"]


def _view_update(bucket):
    bucket.view("a/b").update(new=1, c=2)


def _view_clear(bucket):
    bucket.view("a/b").clear()


def _view_pop(bucket):
    bucket.view("a/b").pop("c")


WRITES = {
    "setitem": lambda bucket: bucket.__setitem__("a/b", {"new": 1}),
    "setitem below": lambda bucket: bucket.__setitem__("a/b/new", 1),
    "setitem above": lambda bucket: bucket.__setitem__("a", {"b": 5}),
    "setitem list item": lambda bucket: bucket.__setitem__("a/b/d/1", 7),
    "delitem": lambda bucket: bucket.__delitem__("a/b"),
    "delitem list item": lambda bucket: bucket.__delitem__("a/b/d/1"),
    "pop": lambda bucket: bucket.pop("a/b"),
    "popitem": lambda bucket: bucket.popitem(),
    "setdefault": lambda bucket: bucket.setdefault("a/b/new", {"x": 1}),
    "update": lambda bucket: bucket.update({"a/b/c": 2, "a/b/new": 3}),
    "update repeated path": lambda bucket: bucket.update([("a/b", 1), ("a/b", {"new": 2})]),
    "ior": lambda bucket: bucket.__ior__({"a/b": 9}),
    "clear": lambda bucket: bucket.clear(),
    "view setitem": _view_write,
    "view nested setitem": _view_nested_write,
    "view delitem": _view_delete,
    "view update": _view_update,
    "view clear": _view_clear,
    "view pop": _view_pop,
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_no_cached_read_is_stale_after_a_write(bucket, other, write):
    other.update(START)
    prime(bucket)
    write(bucket)
    assert_fresh(bucket, other)


def test_a_write_does_not_drop_unrelated_entries(bucket, other, sent):
    other.update(START)
    bucket["z"]
    bucket["a/e"]
    sent.reset()
    bucket["a/b/c"] = 5
    assert bucket["z"] == 0
    assert sent.count == 1


def test_a_write_through_a_view_drops_the_parents_cached_read(bucket, other, sent):
    other["cfg"] = {"x": 1}
    assert bucket["cfg"] == {"x": 1}
    bucket.view("cfg")["x"] = 2
    assert bucket["cfg"] == {"x": 2}


def test_a_write_refused_by_the_server_leaves_no_stale_entry(bucket, other):
    other["l"] = [1, 2, 3]
    bucket.get("l/9")
    bucket.get("l")
    with pytest.raises(RequestError):
        bucket["l/9"] = "refused"
    other["l"] = ["changed"]
    assert bucket.get("l/9", "<missing>") == "<missing>"
    assert bucket["l"] == ["changed"]


def test_a_refused_batch_update_leaves_no_stale_entry(bucket, other):
    other["l"] = [1]
    bucket.get("l")
    with pytest.raises(RequestError):
        bucket.update({"x": 1, "l/5": 2})
    assert "x" not in bucket
    assert bucket["l"] == [1]


def test_a_write_whose_connection_failed_leaves_no_stale_entry(bucket, other):
    """The write may have reached the server before the connection broke."""
    other["k"] = "old"
    assert bucket["k"] == "old"
    target = f"{bucket.url}/v1/bucket/k"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add_passthru(bucket.url)
        mocked.add(responses.POST, target, body=requests.ConnectionError("reset by peer"))
        with pytest.raises(TransportError):
            bucket["k"] = "new"
    other["k"] = "reached the server"
    assert bucket["k"] == "reached the server"


def test_a_local_value_error_sends_nothing_and_keeps_the_cache(bucket, other, sent):
    other["k"] = "old"
    bucket["k"]
    sent.reset()
    with pytest.raises(ValueError):
        bucket["k"] = float("nan")
    assert bucket["k"] == "old"
    assert sent.count == 0


def test_a_read_in_flight_during_a_write_does_not_store_its_stale_value(bucket, other):
    other["k"] = "old"
    transport = bucket._transport
    send = transport.request
    raced = []

    def request(method, target, **kwargs):
        response = send(method, target, **kwargs)
        if method == "GET" and target == "bucket/k" and not raced:
            raced.append(True)
            bucket["k"] = "new"  # written after the server answered the read
        return response

    transport.request = request
    assert bucket["k"] == "old"
    assert raced
    assert bucket["k"] == "new"


def test_a_position_with_leading_zeros_is_not_stale_after_a_write_to_its_plain_spelling(
    bucket, other
):
    other["l"] = [{"x": "old"}, "b"]
    assert bucket["l/01/x"] == "old"
    assert bucket["l/01"] == {"x": "old"}
    bucket["l/1"] = {"x": "new"}
    assert bucket["l/01"] == {"x": "new"}
    assert bucket["l/01/x"] == "new"


def test_a_write_to_a_position_with_leading_zeros_leaves_its_plain_spelling_fresh(bucket, other):
    other["l"] = [{"x": "old"}, "b"]
    assert bucket["l/1/x"] == "old"
    assert bucket["l/1"] == {"x": "old"}
    bucket["l/001"] = {"x": "new"}
    assert bucket["l/1"] == {"x": "new"}
    assert bucket["l/1/x"] == "new"


def test_a_path_with_a_zero_padded_segment_is_not_cached(cache):
    cache.store("l/01", "v", cache.generation)
    cache.store("l/1/02/x", "v", cache.generation)
    assert cache.lookup("l/01") is NOT_CACHED
    assert cache.lookup("l/1/02/x") is NOT_CACHED


def test_invalidating_a_zero_padded_path_drops_everything_from_its_parent(cache):
    for path in ("l/1", "l/1/x", "l/2", "k"):
        cache.store(path, path, cache.generation)
    cache.invalidate("l/01/x")
    assert [cache.lookup(path) for path in ("l/1", "l/1/x", "l/2")] == [NOT_CACHED] * 3
    assert cache.lookup("k") == "k"


def test_a_top_level_key_or_a_lone_zero_is_cached_as_is(cache):
    cache.store("007", "top", cache.generation)
    cache.store("a/0", "zero", cache.generation)
    assert cache.lookup("007") == "top"
    assert cache.lookup("a/0") == "zero"


# KVBucket: invalidate


def test_invalidate_a_path_refetches_it_and_its_ancestors(bucket, other):
    other["a"] = {"b": 1}
    bucket["a"]
    bucket["a/b"]
    other["a"] = {"b": 2}
    bucket.invalidate("a/b")
    assert bucket["a/b"] == 2
    assert bucket["a"] == {"b": 2}


def test_invalidate_a_path_keeps_unrelated_entries(bucket, other, sent):
    other.update({"a": 1, "b": 2})
    bucket["a"]
    bucket["b"]
    bucket.invalidate("a")
    sent.reset()
    assert bucket["b"] == 2
    assert sent.count == 0


def test_invalidate_without_a_path_refetches_everything(bucket, other):
    other.update({"a": 1, "b": 2})
    bucket["a"]
    bucket["b"]
    other.update({"a": 10, "b": 20})
    bucket.invalidate()
    assert (bucket["a"], bucket["b"]) == (10, 20)


def test_invalidate_on_a_view_is_relative_to_its_root(bucket, other):
    other["cfg"] = {"x": 1}
    bucket["cfg/x"]
    other["cfg"] = {"x": 2}
    bucket.view("cfg").invalidate("x")
    assert bucket["cfg/x"] == 2


def test_invalidate_refuses_an_invalid_path(bucket):
    with pytest.raises(ValueError):
        bucket.invalidate("a//b")
