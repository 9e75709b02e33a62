"""How many requests each KVBucket operation sends (against the real server).

A cache hit sends nothing, a miss exactly one; whole-bucket reads and batch
writes are one request however many keys they touch.
"""

from __future__ import annotations

import threading

import pytest

from kvpio_mapping import KVBucket

DATA = {f"key{i}": {"n": i, "list": [i, i + 1]} for i in range(20)}


@pytest.fixture(params=[5.0, 0], ids=["cached", "uncached"])
def bucket(request, kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=request.param)
    bucket.update(DATA)
    return bucket


@pytest.fixture
def cached(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    bucket.update(DATA)
    return bucket


@pytest.fixture
def sent(bucket, count_requests):
    return count_requests(bucket)


@pytest.fixture
def cached_sent(cached, count_requests):
    return count_requests(cached)


def test_a_miss_is_one_request(cached, cached_sent):
    cached["key1"]
    assert cached_sent.count == 1


def test_a_hit_is_no_request(cached, cached_sent):
    cached["key1"]
    cached_sent.reset()
    cached["key1"]
    cached["key1/list/2"]
    cached.get("key1")
    assert "key1/n" in cached
    assert cached_sent.count == 0


def test_a_missing_key_read_twice_is_one_request(cached, cached_sent):
    for _ in range(2):
        with pytest.raises(KeyError):
            cached["nothing"]
    assert cached_sent.count == 1


def test_a_read_after_dict_of_the_bucket_is_no_request(cached, cached_sent):
    dict(cached)
    cached_sent.reset()
    assert cached["key3/list/1"] == 3
    assert cached_sent.count == 0


@pytest.mark.parametrize(
    "operation",
    [
        len,
        lambda b: [key for key in b],  # list(b) would call len(b) first
        lambda b: [key for key in b.keys()],  # noqa: SIM118
        lambda b: list(reversed(b)),
        bool,
        lambda b: len(b.keys()),
        lambda b: len(b.items()),
    ],
    ids=["len", "iter", "keys", "reversed", "bool", "len keys", "len items"],
)
def test_listing_keys_is_one_request(bucket, sent, operation):
    operation(bucket)
    assert sent.count == 1


@pytest.mark.parametrize(
    "operation",
    [
        lambda b: [item for item in b.items()],
        lambda b: [value for value in b.values()],
        lambda b: b.copy(),
        lambda b: list(reversed(b.items())),
        lambda b: {"x": 1} in b.values(),
        lambda b: b | {"x": 1},
        lambda b: {"x": 1} | b,
    ],
    ids=["items", "values", "copy", "reversed items", "in values", "or", "ror"],
)
def test_reading_the_whole_bucket_is_one_request(bucket, sent, operation):
    operation(bucket)
    assert sent.count == 1


def test_dict_of_a_cached_bucket_is_one_request(cached, cached_sent):
    assert dict(cached) == DATA
    assert cached_sent.count == 1


def test_comparing_a_cached_bucket_with_a_dict_is_one_request(cached, cached_sent):
    assert cached == DATA
    assert cached_sent.count == 1


def test_update_with_100_items_is_one_request(bucket, sent):
    bucket.update({f"u{i}": i for i in range(100)})
    assert sent.count == 1


def test_update_from_pairs_and_keywords_is_one_request(bucket, sent):
    bucket.update([(f"p{i}", i) for i in range(50)], kw=1)
    assert sent.count == 1


def test_update_with_a_repeated_path_is_one_request(bucket, sent):
    bucket.update([("r", 1), ("r/x", 2), ("r", 3)])
    assert sent.count == 1
    assert bucket["r"] == 3


def test_ior_is_one_request(bucket, sent):
    bucket |= {f"i{i}": i for i in range(10)}
    assert sent.count == 1


def test_clear_is_one_request(bucket, sent):
    bucket.clear()
    assert sent.count == 1


def test_clear_of_a_view_is_one_request(bucket, sent):
    bucket.view("key1").clear()
    assert sent.count == 1


@pytest.mark.parametrize("key", ["key1", "nothing"])
def test_pop_is_one_request(bucket, sent, key):
    bucket.pop(key, None)
    assert sent.count == 1


def test_del_is_one_request(bucket, sent):
    del bucket["key1"]
    assert sent.count == 1


def test_del_of_a_missing_key_is_one_request(bucket, sent):
    with pytest.raises(KeyError):
        del bucket["nothing"]
    assert sent.count == 1


def test_setitem_is_one_request(bucket, sent):
    bucket["key1/n"] = 5
    assert sent.count == 1


def test_popitem_is_two_requests(bucket, sent):
    bucket.popitem()
    assert sent.count == 2


def test_setdefault_of_a_missing_key_is_at_most_two_requests(bucket, sent):
    assert bucket.setdefault("new", 1) == 1
    assert sent.count <= 2


def test_setdefault_of_a_present_key_is_one_request(bucket, sent):
    bucket.setdefault("key1", 1)
    assert sent.count == 1


def test_a_write_then_a_read_is_two_requests(cached, cached_sent):
    cached["w"] = {"a": 1}
    assert cached["w/a"] == 1
    assert cached_sent.count == 2


# whole-bucket reads are one request at any size and ttl, and one consistent state

WHOLE_READS = {
    "dict": dict,
    "items": lambda b: list(b.items()),
    "values": lambda b: list(b.values()),
    "comprehension": lambda b: {k: v for k, v in b.items()},
    "keys then lookups": lambda b: {k: b[k] for k in b.keys()},  # noqa: SIM118
}


@pytest.mark.parametrize("read", WHOLE_READS.values(), ids=WHOLE_READS.keys())
@pytest.mark.parametrize("ttl", [5.0, 0], ids=["cached", "uncached"])
def test_a_whole_read_of_more_keys_than_the_cache_holds_is_one_request(
    kvpio_account, count_requests, ttl, read
):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=ttl, maxsize=64)
    model = {f"k{i}": {"n": i} for i in range(100)}
    bucket.update(model)
    sent = count_requests(bucket)
    found = read(bucket)
    assert sent.count == 1
    assert found in (model, list(model.items()), list(model.values()))


def test_dict_of_a_view_is_one_request(kvpio_account, count_requests):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket["v"] = {f"k{i}": i for i in range(10)}
    view = bucket.view("v")
    sent = count_requests(bucket)
    assert dict(view) == {f"k{i}": i for i in range(10)}
    assert sent.count == 1


@pytest.mark.parametrize("ttl", [5.0, 0], ids=["cached", "uncached"])
def test_dict_is_one_snapshot_while_another_client_deletes(kvpio_account, ttl):
    """Another client deletes keys right after the listing: dict() still has them all."""
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=ttl, maxsize=4)
    other = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    model = {f"k{i}": i for i in range(10)}
    bucket.update(model)
    transport = bucket._transport
    send = transport.request

    def request(method, target, **kwargs):
        answer = send(method, target, **kwargs)
        if method == "GET":
            other.clear()
        return answer

    transport.request = request
    assert dict(bucket) == model


def test_a_lookup_after_a_write_is_not_served_from_the_listing(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket.update({"a": 1, "b": 2})
    keys = iter(bucket.keys())
    bucket["a"] = 10
    assert [bucket[key] for key in keys] == [10, 2]


@pytest.mark.parametrize("ttl", [5.0, 0], ids=["cached", "uncached"])
def test_a_lookup_after_a_write_through_a_view_is_not_served_from_the_listing(kvpio_account, ttl):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=ttl)
    bucket.update({"a": {"x": 1}, "b": 2})
    keys = iter(bucket.keys())
    bucket.view("a")["x"] = 10
    assert [bucket[key] for key in keys] == [{"x": 10}, 2]


def test_a_views_lookup_is_not_served_from_its_buckets_listing(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket.update({"a": {"a": "inner"}, "b": 2})
    keys = iter(bucket.keys())
    assert bucket.view("a")[next(keys)] == "inner"


def test_the_listing_serves_only_the_thread_that_listed(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    other = KVBucket(kvpio_account.url, kvpio_account.api_key, ttl=0)
    bucket["a"] = 1
    list(bucket.keys())
    other["a"] = 2
    seen = []
    thread = threading.Thread(target=lambda: seen.append(bucket["a"]))
    thread.start()
    thread.join(10)
    assert seen == [2]


def test_dict_of_a_view_leaves_the_cached_value_whole(kvpio_account):
    bucket = KVBucket(kvpio_account.url, kvpio_account.api_key)
    bucket["v"] = {"a": 1, "b": {"c": 2}}
    assert dict(bucket.view("v")) == {"a": 1, "b": {"c": 2}}
    assert bucket["v"] == {"a": 1, "b": {"c": 2}}
    assert bucket["v/b/c"] == 2
