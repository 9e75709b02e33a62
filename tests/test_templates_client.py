"""TemplateStore through ``connect()``, against the real server of the ``kvpio_server`` fixture."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest
from contract import TEMPLATE_ROWS

from kvpio_mapping import (
    InvalidPathError,
    TemplateRenderError,
    TemplateStore,
    TransportError,
    connect,
)


@pytest.fixture
def conn(kvpio_account):
    return connect(kvpio_account.url, kvpio_account.api_key)


@pytest.fixture
def store(conn):
    return conn.templates


@pytest.fixture
def bucket(conn):
    return conn.bucket


@pytest.fixture
def sent(conn, count_requests):
    return count_requests(conn.transport)


@pytest.fixture
def fresh(kvpio_account):
    """An uncached store on its own connection: what the server renders now."""
    return connect(kvpio_account.url, kvpio_account.api_key, ttl=0).templates


# the mapping


def test_a_template_renders_with_the_buckets_data(store, bucket):
    store["greet"] = "Hello {{ name }}!"
    bucket["name"] = "World"
    assert store["greet"] == "Hello World!"


def test_source_returns_the_stored_source_unrendered(store):
    store["greet"] = "Hello {{ name }}!"
    assert store.source("greet") == "Hello {{ name }}!"


def test_render_with_data_overrides_top_level_names(store, bucket):
    store["greet"] = "{{ a }} {{ b }}"
    bucket.update({"a": "bucket-a", "b": "bucket-b"})
    assert store.render("greet", {"b": "data-b"}) == "bucket-a data-b"
    assert store.render("greet") == "bucket-a bucket-b"
    assert store["greet"] == "bucket-a bucket-b"


def test_render_with_data_that_is_not_a_dict_raises_type_error(store, sent):
    with pytest.raises(TypeError):
        store.render("greet", [("a", 1)])
    assert sent.sent == []


def test_an_undefined_name_renders_as_empty_text(store):
    store["t"] = "[{{ nothing }}][{{ nothing.here }}]"
    assert store["t"] == "[][]"


def test_an_empty_rendering_is_not_a_missing_template(store):
    store["empty"] = ""
    assert store["empty"] == ""
    assert "empty" in store


def test_non_ascii_text_renders(store, bucket):
    bucket["ü"] = "wörld"
    store["t"] = "héllo {{ data }}"
    assert store.render("t", {"data": "日本"}) == "héllo 日本"


@pytest.mark.parametrize(
    "operation",
    [
        lambda s: s["missing"],
        lambda s: s.source("missing"),
        lambda s: s.render("missing", {"a": 1}),
    ],
    ids=["getitem", "source", "render"],
)
def test_a_missing_template_raises_key_error(store, operation):
    with pytest.raises(KeyError):
        operation(store)


def test_get_of_a_missing_template_returns_the_default(store):
    assert store.get("missing", "default") == "default"


def test_del_removes_a_template(store):
    store["t"] = "x"
    del store["t"]
    assert "t" not in store
    with pytest.raises(KeyError):
        store["t"]


def test_del_of_a_missing_template_raises_key_error(store):
    with pytest.raises(KeyError):
        del store["missing"]


def test_pop_of_a_missing_template_returns_the_default(store):
    assert store.pop("missing", "default") == "default"


def test_iter_len_and_in(store):
    assert len(store) == 0
    store["one"] = "1"
    store["two"] = "{{ 2 }}"
    assert list(store) == ["one", "two"]
    assert len(store) == 2
    assert "one" in store
    assert "three" not in store
    assert dict(store) == {"one": "1", "two": "2"}


def test_popitem_removes_the_last_stored_template_as_dict_does_its_last_pair(store):
    reference = {}
    for name in ("first", "second", "third"):
        store[name] = reference[name] = f"text of {name}"
    store["first"] = reference["first"] = "again"  # keeps its place, in both
    assert store.popitem() == reference.popitem() == ("third", "text of third")
    assert store.popitem() == reference.popitem()
    assert list(store) == list(reference) == ["first"]
    assert store.popitem() == reference.popitem() == ("first", "again")
    with pytest.raises(KeyError):
        store.popitem()


def test_clear_removes_every_template_even_one_that_fails_to_render(store, bucket):
    store["ok"] = "fine"
    store["broken"] = "{{ 1 / 0 }}"
    bucket["kept"] = 1
    with pytest.raises(TemplateRenderError):
        store["broken"]
    store.clear()
    assert list(store) == []
    assert bucket["kept"] == 1


def test_templates_and_bucket_keys_are_separate_namespaces(store, bucket):
    store["same"] = "template"
    bucket["same"] = "value"
    assert store["same"] == "template"
    assert bucket["same"] == "value"
    del store["same"]
    assert bucket["same"] == "value"


def test_a_template_name_with_a_slash_is_one_flat_name(store):
    store["a/b"] = "flat"
    assert list(store) == ["a/b"]
    assert store["a/b"] == "flat"
    assert "a" not in store


@pytest.mark.parametrize("name", ["", "a//b", "/a", "..", "a\x00"])
def test_an_invalid_name_is_refused_by_writes_and_sends_nothing(store, sent, name):
    with pytest.raises(InvalidPathError):
        store[name] = "x"
    assert sent.sent == []


@pytest.mark.parametrize("name", ["", "a//b", "..", 1, None, ("t",)], ids=repr)
def test_a_read_of_a_name_that_can_never_exist_answers_as_dict_does_and_sends_nothing(
    store, sent, name
):
    with pytest.raises(KeyError) as caught:
        store[name]
    assert caught.value.args == (name,)
    assert name not in store
    assert store.get(name, "dflt") == "dflt"
    assert store.pop(name, "dflt") == "dflt"
    with pytest.raises(KeyError):
        del store[name]
    with pytest.raises(TypeError, match="unhashable"):
        store.get(["t"])
    assert sent.sent == []


@pytest.mark.parametrize("source", [b"bytes", 1, None, ["list"]], ids=repr)
def test_a_non_str_source_raises_type_error_and_sends_nothing(store, sent, source):
    with pytest.raises(TypeError):
        store["t"] = source
    assert sent.sent == []


def test_a_template_with_a_syntax_error_is_refused(store):
    with pytest.raises(TemplateRenderError):
        store["bad"] = "{{ unclosed"
    assert "bad" not in store


# the contract's rows (kvpio-v1.md)


@pytest.mark.parametrize(("source", "foo", "rendered"), TEMPLATE_ROWS)
def test_the_contracts_template_rows_render_from_the_bucket(store, bucket, source, foo, rendered):
    bucket["foo"] = foo
    store["test"] = source
    assert store["test"] == rendered
    assert store.source("test") == source


@pytest.mark.parametrize(("source", "foo", "rendered"), TEMPLATE_ROWS)
def test_the_contracts_template_rows_render_from_data(store, source, foo, rendered):
    store["test"] = source
    assert store.render("test", {"foo": foo}) == rendered


# the rendered-text cache


def test_a_repeated_lookup_is_one_request(store, sent):
    store["t"] = "x"
    sent.reset()
    store["t"]
    store["t"]
    assert len(sent.templates()) == 1


def test_a_bucket_write_to_a_used_key_makes_the_next_lookup_fresh(store, bucket):
    bucket["foo"] = "old"
    store["t"] = "{{ foo }}"
    assert store["t"] == "old"
    bucket["foo"] = "new"
    assert store["t"] == "new"


@pytest.mark.parametrize(
    "write",
    [
        lambda b: b.__setitem__("foo/bar", "new"),
        lambda b: b.view("foo").__setitem__("bar", "new"),
        lambda b: b.update({"foo": {"bar": "new"}}),
        lambda b: b.__ior__({"foo/bar": "new"}),
        lambda b: b.setdefault("foo/baz", "new"),
        lambda b: b.pop("foo/bar"),
        lambda b: b.__delitem__("foo"),
        lambda b: b.clear(),
        lambda b: b.popitem(),
    ],
    ids=["nested", "view", "update", "ior", "setdefault", "pop", "del", "clear", "popitem"],
)
def test_every_kind_of_bucket_write_to_a_used_key_evicts_the_rendering(store, bucket, fresh, write):
    bucket["foo"] = {"bar": "old"}
    store["t"] = "{{ foo.bar }}|{{ foo.baz }}"
    assert store["t"] == fresh["t"] == "old|"
    write(bucket)
    assert store["t"] == fresh["t"]


@pytest.mark.parametrize(
    "write",
    [
        lambda b: b.__setitem__("foo", "new"),
        lambda b: b.pop("foo"),
        lambda b: b.update({"foo": "new"}),
        lambda b: b.clear(),
    ],
    ids=["setitem", "pop", "update", "clear"],
)
def test_a_bucket_write_whose_connection_broke_evicts_the_rendering(store, bucket, fresh, write):
    """The write may have reached the server before the connection broke."""
    bucket["foo"] = "old"
    store["t"] = "{{ foo }}"
    assert store["t"] == "old"
    transport = bucket._transport
    send = transport.request

    def request(method, target, **kwargs):
        if method != "GET" and target.startswith("bucket/"):
            send(method, target, **kwargs)
            raise TransportError("connection reset after the server applied the write")
        return send(method, target, **kwargs)

    transport.request = request
    with pytest.raises(TransportError):
        write(bucket)
    transport.request = send
    assert store["t"] == fresh["t"]


def test_a_bucket_write_to_an_unrelated_key_does_not_evict(store, bucket, sent):
    bucket["foo"] = "v"
    store["t"] = "{{ foo }}"
    store["t"]
    sent.reset()
    bucket["unrelated"] = 1
    bucket["foo2"] = 1
    assert store["t"] == "v"
    assert sent.templates() == []


def test_setting_a_template_evicts_its_rendering(store):
    store["t"] = "first"
    assert store["t"] == "first"
    store["t"] = "second"
    assert store["t"] == "second"


def test_deleting_a_template_evicts_its_rendering(store):
    store["t"] = "first"
    assert store["t"] == "first"
    del store["t"]
    with pytest.raises(KeyError):
        store["t"]


def test_a_write_by_another_client_is_seen_after_ttl(kvpio_account, conn, clock):
    store = TemplateStore(conn.transport, ttl=10.0, timer=clock)
    elsewhere = connect(kvpio_account.url, kvpio_account.api_key)
    elsewhere.bucket["foo"] = "old"
    store["t"] = "{{ foo }}"
    assert store["t"] == "old"
    elsewhere.bucket["foo"] = "new"
    clock.advance(9.9)
    assert store["t"] == "old"
    clock.advance(0.2)
    assert store["t"] == "new"


def test_ttl_zero_renders_on_every_lookup(kvpio_account, count_requests):
    conn = connect(kvpio_account.url, kvpio_account.api_key, ttl=0)
    sent = count_requests(conn.transport)
    conn.templates["t"] = "x"
    sent.reset()
    conn.templates["t"]
    conn.templates["t"]
    assert len(sent.templates()) == 2


def test_invalidate_drops_cached_renderings(kvpio_account, conn):
    elsewhere = connect(kvpio_account.url, kvpio_account.api_key)
    elsewhere.bucket["foo"] = "old"
    conn.templates["t"] = "{{ foo }}"
    conn.templates["u"] = "{{ foo }}!"
    assert (conn.templates["t"], conn.templates["u"]) == ("old", "old!")
    elsewhere.bucket["foo"] = "new"
    conn.templates.invalidate("t")
    assert (conn.templates["t"], conn.templates["u"]) == ("new", "old!")
    conn.templates.invalidate()
    assert conn.templates["u"] == "new!"


def test_a_rendering_of_names_too_many_to_list_is_dropped_by_any_write(conn):
    many = "".join(f"{{{{ {'é' * 300}{n} }}}}" for n in range(90))
    conn.templates["t"] = many + "{{ foo }}"
    conn.bucket["foo"] = "old"
    assert conn.templates["t"] == "old"
    conn.bucket["foo"] = "new"
    assert conn.templates["t"] == "new"


def test_cache_info_counts_hits_and_misses(store):
    store["t"] = "x"
    store["t"]
    store["t"]
    info = store.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)


# pickling: a connection and a template store go to worker processes as their configuration


def render_in_worker(conn):
    return conn.templates["hello"], conn.account()["id"]


def test_a_connection_pickles_as_its_configuration(kvpio_account):
    conn = connect(kvpio_account.url, kvpio_account.api_key, ttl=3.0, maxsize=7)
    conn.bucket["name"] = "Ada"
    conn.templates["hello"] = "Hello {{ name }}"
    clone = pickle.loads(pickle.dumps(conn))
    assert clone.transport is not conn.transport
    assert clone.transport.url == kvpio_account.url
    assert clone.bucket._cache.ttl == 3.0 and clone.bucket._cache.maxsize == 7
    assert clone.templates["hello"] == "Hello Ada"
    clone.bucket["name"] = "Bob"  # the clone's bucket still drops the clone's renderings
    assert clone.templates["hello"] == "Hello Bob"


def test_a_template_store_pickles_as_its_configuration(conn, store):
    store["hello"] = "Hi"
    clone = pickle.loads(pickle.dumps(store))
    assert clone["hello"] == "Hi"
    assert clone.cache_info().maxsize == store.cache_info().maxsize


def test_a_connection_goes_to_worker_processes(kvpio_account):
    conn = connect(kvpio_account.url, kvpio_account.api_key)
    conn.bucket["name"] = "Ada"
    conn.templates["hello"] = "Hello {{ name }}"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        answers = pool.map(render_in_worker, [conn, conn], chunksize=1)
    assert answers == [("Hello Ada", kvpio_account.id)] * 2
