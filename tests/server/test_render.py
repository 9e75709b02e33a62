"""The template renderer: the contract's examples, limits, and a hostile corpus.

Every hostile template must end in RenderError or harmless text, quickly, and leave the
renderer working. The Renderer is driven directly with asyncio.run (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from contract import TEMPLATE_ROWS

from kvpio_mapping.server.render import (
    Renderer,
    RenderError,
    RenderLimits,
    SourceTooLargeError,
    referenced_names,
)

TIMEOUT = 1.0
LIMITS = RenderLimits(timeout=TIMEOUT)
# A runaway render must be stopped within the timeout plus this margin.
MARGIN = 1.5

LOOP_FOREVER = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# Text that would show an object, a function or an address leaked out of the sandbox.
LEAK = re.compile(r"class|function|module|method|built-?in|globals|object at|0x[0-9a-f]{6}")


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    with Renderer(LIMITS, workers=2) as shared:
        yield shared


def render(renderer: Renderer, source: str, context: dict[str, Any] | None = None) -> str:
    return asyncio.run(renderer.render(source, context or {}))


def assert_still_works(renderer: Renderer) -> None:
    assert render(renderer, "{{ a + b }}", {"a": 1, "b": 2}) == "3"


# --- the contract's rows -------------------------------------------------------------


@pytest.mark.parametrize(("source", "foo", "expected"), TEMPLATE_ROWS)
def test_contract_rows(renderer: Renderer, source: str, foo: Any, expected: str) -> None:
    assert render(renderer, source, {"foo": foo}) == expected


@pytest.mark.parametrize(("source", "foo", "expected"), TEMPLATE_ROWS)
def test_contract_rows_reference_foo(source: str, foo: Any, expected: str) -> None:
    assert referenced_names(source) == frozenset({"foo"})


# --- referenced_names ----------------------------------------------------------------


def test_referenced_names_leaves_out_locals_and_globals() -> None:
    source = (
        "{% set local = 1 %}{% for item in items %}{{ item }}{{ loop.index }}{% endfor %}"
        "{{ local }}{{ range(3)|list }}{{ namespace }}{{ user.name }}"
        "{% macro m(arg) %}{{ arg }}{{ free }}{% endmacro %}"
    )
    assert referenced_names(source) == frozenset({"items", "user", "free"})


def test_referenced_names_is_cached() -> None:
    source = "{{ cached_a }} {{ cached_b }}"
    assert referenced_names(source) is referenced_names(source)


def test_referenced_names_syntax_error() -> None:
    with pytest.raises(RenderError, match="syntax error on line 1"):
        referenced_names("{{ foo ")


def test_referenced_names_source_too_large() -> None:
    limits = RenderLimits(max_source=100)
    assert referenced_names("x" * 100, limits) == frozenset()
    with pytest.raises(SourceTooLargeError, match="101 bytes"):
        referenced_names("x" * 101, limits)
    with pytest.raises(SourceTooLargeError):  # counted in UTF-8 bytes, not characters
        referenced_names("é" * 60, limits)


def test_referenced_names_does_not_evaluate_constant_filters() -> None:
    # Jinja2 folds constant filter calls while compiling; parsing must not run them.
    started = time.monotonic()
    assert referenced_names("{{ 'a'|center(1000000000) }}{{ [1]|batch(10**9) }}") == frozenset()
    assert time.monotonic() - started < 0.5


def test_referenced_names_deep_nesting() -> None:
    with pytest.raises(RenderError):
        referenced_names("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")


# --- ordinary rendering --------------------------------------------------------------


def test_undefined_renders_empty(renderer: Renderer) -> None:
    source = "[{{ nothing }}|{{ nothing.here }}|{{ nothing['x'][0].y }}|{{ foo.missing }}]"
    assert render(renderer, source, {"foo": {"a": 1}}) == "[|||]"


def test_data_overrides_and_json_types(renderer: Renderer) -> None:
    context = {"n": 1.5, "t": True, "z": None, "l": [1, "two"], "s": "héllo ☃ 😀"}
    assert render(renderer, "{{ n }} {{ t }} {{ z }} {{ l[1] }} {{ s }}", context) == (
        "1.5 True None two héllo ☃ 😀"
    )


def test_lone_surrogates_do_not_break_the_answer(renderer: Renderer) -> None:
    text = render(renderer, "{{ s }}", {"s": "a\ud800b"})
    text.encode("utf-8")  # always encodable for a text/plain; charset=utf-8 answer
    assert text.startswith("a") and text.endswith("b")


def test_syntax_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match="syntax error on line 2"):
        render(renderer, "ok\n{% for %}")
    assert_still_works(renderer)


def test_source_too_large(renderer: Renderer) -> None:
    with pytest.raises(SourceTooLargeError):
        render(renderer, "x" * (LIMITS.max_source + 1))


def test_output_limit() -> None:
    with Renderer(RenderLimits(timeout=TIMEOUT, max_output=10), workers=1) as small:
        assert render(small, "{{ 'x' * 10 }}") == "x" * 10
        with pytest.raises(RenderError, match="max_output"):
            render(small, "{{ 'x' * 11 }}")
        with pytest.raises(RenderError, match="max_output"):
            render(small, "{% for i in range(100) %}ab{% endfor %}")
        assert render(small, "{{ 1 }}") == "1"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 2 ** 10 }}", "1024"),
        ("{{ (10 ** 1000) % 7 }}", str((10**1000) % 7)),
        ("{{ 2 ** -2 }}", "0.25"),
        ("{{ 1.5 ** 2 }}", "2.25"),
        ("{{ 'ab' * 3 }}", "ababab"),
        ("{{ [0] * 3 }}", "[0, 0, 0]"),
        ("{{ 3 * 'x' }}", "xxx"),
        ("{{ '%05d|%-3s|' % (42, 'a') }}", "00042|a  |"),
        ("{{ '{:>4}|{}'.format('a', 1) }}", "   a|1"),
        ("{{ range(3)|list }}", "[0, 1, 2]"),
        ("{{ 'x'|center(5) }}", "  x  "),
        ("{{ [1, 2, 3]|batch(2)|list }}", "[[1, 2], [3]]"),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
            "{% endfor %}{{ ns.n }}",
            "6",
        ),
        ("{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}", "aba"),
        ("{% set j = joiner('-') %}{% for i in range(3) %}{{ j() }}{{ i }}{% endfor %}", "0-1-2"),
        ("{% block b %}in block{% endblock %}|{{ self.b() }}", "in block|in block"),
    ],
)
def test_ordinary_operations_work(renderer: Renderer, source: str, expected: str) -> None:
    assert render(renderer, source) == expected


# --- the hostile corpus --------------------------------------------------------------

# (id, template, what must happen: "error" = RenderError, "text" = harmless text,
# "either" = one of the two)
HOSTILE = [
    ("nested-loops", LOOP_FOREVER, "error"),
    ("str-repeat", "{{ 'a' * 10**8 }}", "error"),
    ("list-repeat", "{{ [1] * 10**7 }}", "error"),
    ("repeat-reversed", "{{ 10**8 * 'a' }}", "error"),
    ("huge-power", "{{ (7 ** (10 ** 7)) % 10 }}", "error"),
    ("power-tower", "{{ ((2 ** 1000) ** 1000) ** 1000 }}", "error"),
    (
        "int-squaring",
        "{% set ns = namespace(x=3) %}{% for i in range(64) %}"
        "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
        "error",
    ),
    ("huge-range", "{{ range(10**9)|list }}", "error"),
    (
        "huge-output",
        "{% for i in range(100000) %}{% for j in range(1000) %}"
        "xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
        "error",
    ),
    ("macro-recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "error"),
    ("block-recursion", "{% block a %}{{ self.a() }}{% endblock %}", "error"),
    ("memory-blowup", "{{ ('a' * 1000000).replace('a', 'a' * 1000)|length }}", "error"),
    ("ljust", "{{ 'a'.ljust(10**9) }}", "error"),
    ("markup-zfill", "{{ ('a'|e).zfill(10**9) }}", "error"),
    ("center-filter", "{{ 'a'|center(10**9) }}", "error"),
    ("indent-filter", "{{ ('a\\n' * 100000)|indent(1000) }}", "error"),
    ("batch-filter", "{{ [1]|batch(10**9, 'x')|list }}", "error"),
    ("slice-filter", "{{ [1]|slice(10**9)|list }}", "error"),
    ("printf-star", "{{ '%0*d' % (10**9, 1) }}", "error"),
    ("printf-width", "{{ '%01000000000d' % 1 }}", "error"),
    ("format-filter", "{{ '%01000000000d'|format(1) }}", "error"),
    ("format-width", "{{ '{:>1000000000}'.format('a') }}", "error"),
    ("format-nested", "{{ '{:{}}'.format('a', 10**9) }}", "error"),
    ("lipsum-huge", "{{ lipsum(n=10**6) }}", "error"),
    ("mro", "{{ ''.__class__.__mro__ }}", "text"),
    ("subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "error"),
    ("globals", "{{ foo.__init__.__globals__ }}", "text"),
    ("attr-class", "{{ ''|attr('__class__') }}", "text"),
    ("map-attr", "{{ [foo]|map(attribute='__class__')|list }}", "text"),
    ("format-class", "{{ '{0.__class__}'.format(x) }}", "text"),
    ("cve-2016-10745", '{{ "{0.__class__.__init__.__globals__}".format(x) }}', "text"),
    ("cve-2019-10906", "{{ '{0.__class__.__base__}'.format_map({'0': x}) }}", "either"),
    ("cve-2019-10906-b", "{{ '{a.__class__.__base__}'.format_map({'a': x}) }}", "text"),
    ("format-map-repr", "{{ x.format_map }}", "text"),
    ("format-map-call", "{{ '{a.__class__}'.format_map({'a': x}) }}", "text"),
    ("cve-2024-56326", '{% set f = "".format %}{{ f("{0.__class__.__init__}", x) }}', "text"),
    ("cve-2025-27516", '{{ "{0.__class__}"|attr("format")(x) }}', "text"),
    ("attr-format", "{{ x|attr('format')('{0.__class__.__mro__}') }}", "text"),
    ("self", "{{ self }}", "text"),
    ("self-globals", "{{ self.__init__.__globals__ }}", "text"),
    ("self-context", "{{ self._TemplateReference__context }}", "text"),
    ("cycler-globals", "{{ cycler.__init__.__globals__ }}", "text"),
    ("joiner-globals", "{{ joiner.__init__.__globals__ }}", "text"),
    ("namespace-globals", "{{ namespace.__init__.__globals__ }}", "text"),
    ("lipsum-globals", "{{ lipsum.__globals__ }}", "text"),
    ("method-repr", "{{ x.upper }}{{ foo.items }}{{ range }}{{ dict }}", "text"),
    ("config", "{{ config }}{{ request }}{{ os }}", "text"),
    ("nested-callable", "{{ [range] }}", "either"),
    ("string-filter-callable", "{{ range|string }}", "either"),
    ("printf-callable", "{{ '%s' % range }}", "either"),
    ("dict-callable", "{{ {'a': range} }}", "either"),
    ("nested-method", "{{ [''.join] }}", "either"),
    ("cycler-object", "{{ cycler(1, 2) }}", "either"),
    ("nested-class", "{{ [cycler] }}", "either"),
    ("format-callable", "{{ '{0}'.format(dict) }}", "either"),
    ("joined-callables", "{{ [range, dict]|join(',') }}", "either"),
    ("concat-callable", "{{ 'a' ~ range }}", "either"),
    ("pprint-callable", "{{ range|pprint }}", "either"),
    ("loop-cycle", "{% for i in [1] %}{{ [loop.cycle] }}{% endfor %}", "either"),
    ("mutate-dict", "{{ foo.update({'a': 2}) }}", "error"),
    ("mutate-list", "{{ items.append(1) }}", "error"),
    (
        "namespace-dunder",
        "{% set ns = namespace() %}{% set ns.__class__ = 1 %}{{ ns.__class__.__mro__ }}",
        "text",
    ),
    ("include", '{% include "/etc/passwd" %}', "error"),
    ("extends", '{% extends "/etc/passwd" %}', "error"),
    ("import", '{% import "/etc/passwd" as p %}', "error"),
    ("from-import", '{% from "x" import y %}', "error"),
    ("call-undefined", "{{ nothing() }}", "error"),
]


@pytest.mark.parametrize(
    ("source", "outcome"),
    [pytest.param(source, outcome, id=name) for name, source, outcome in HOSTILE],
)
def test_hostile_template(renderer: Renderer, source: str, outcome: str) -> None:
    context = {"x": "s", "foo": {"a": 1}, "items": [1, 2]}
    started = time.monotonic()
    if outcome == "error":
        with pytest.raises(RenderError):
            render(renderer, source, context)
    else:
        try:
            text = render(renderer, source, context)
        except RenderError:
            assert outcome == "either"
        else:
            assert not LEAK.search(text), text
    assert time.monotonic() - started < TIMEOUT + MARGIN
    assert_still_works(renderer)


def test_internal_reprs_in_the_data_or_source_still_render(renderer: Renderer) -> None:
    source = "{{ x }} <class 'y'>"
    data = {"x": "<function f at 0x7f0000000000>"}
    assert render(renderer, source, data) == "<function f at 0x7f0000000000> <class 'y'>"


@pytest.mark.parametrize(
    "source",
    ["{{ 1 + 'a' }}", "{{ [range]|sum }}", "{{ cycler(1, 2) + 1 }}", "{{ range(x) }}"],
)
def test_error_messages_name_no_python_class_or_object(renderer: Renderer, source: str) -> None:
    with pytest.raises(RenderError) as raised:
        render(renderer, source, {"x": "s"})
    message = str(raised.value)
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b|0x[0-9a-f]{4}|<class ", message), message


@pytest.mark.parametrize("source", ["{{ 2.0 ** 10000 }}", "{{ (10 ** 400) * 1.5 }}"])
def test_a_number_out_of_range_says_so(renderer: Renderer, source: str) -> None:
    with pytest.raises(RenderError, match=r"^template failed: a number is out of range$"):
        render(renderer, source, {})


def test_limit_messages_name_the_limit(renderer: Renderer) -> None:
    cases = {
        "{{ 7 ** (10 ** 7) }}": "max_power",
        "{{ 'a' * 10**8 }}": "max_repeat",
        "{{ range(10**9) }}": "max_range",
    }
    for source, name in cases.items():
        started = time.monotonic()
        with pytest.raises(RenderError, match=name):
            render(renderer, source)
        assert time.monotonic() - started < 0.5  # refused before computing


def test_memory_limit(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match="memory"):
        render(renderer, "{{ ('a' * 1000000).replace('a', 'a' * 1000)|length }}")
    assert_still_works(renderer)


def worker_pids(renderer: Renderer) -> set[int]:
    return {worker.proc.pid for worker in renderer._workers}


def test_timeout_kills_and_replaces_the_worker() -> None:
    with Renderer(LIMITS, workers=1) as single:
        assert_still_works(single)
        before = worker_pids(single)
        started = time.monotonic()
        with pytest.raises(RenderError, match=r"render took longer than 1\.0 s"):
            render(single, LOOP_FOREVER)
        elapsed = time.monotonic() - started
        assert TIMEOUT <= elapsed < TIMEOUT + MARGIN
        assert_still_works(single)
        assert worker_pids(single).isdisjoint(before)


def test_dead_idle_worker_is_replaced() -> None:
    with Renderer(LIMITS, workers=1) as single:
        assert_still_works(single)
        (pid,) = worker_pids(single)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if next(iter(single._workers)).proc.poll() is not None:
                break
            time.sleep(0.01)
        assert_still_works(single)
        assert pid not in worker_pids(single)


def test_cancelled_render_kills_its_worker() -> None:
    async def scenario(single: Renderer) -> None:
        task = asyncio.create_task(single.render(LOOP_FOREVER, {}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await single.render("{{ 6 * 7 }}", {}) == "42"

    with Renderer(LIMITS, workers=1) as single:
        assert_still_works(single)
        before = worker_pids(single)
        asyncio.run(scenario(single))
        assert worker_pids(single).isdisjoint(before)


def test_hostile_renders_do_not_block_the_event_loop() -> None:
    """Four runaway renders on two workers queue, time out, and the loop stays free."""

    async def scenario(pool: Renderer) -> tuple[float, list[BaseException | str], float]:
        max_gap = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal max_gap
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                max_gap = max(max_gap, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await asyncio.gather(
            *(pool.render(LOOP_FOREVER, {}) for _ in range(4)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        stop.set()
        await tick
        return max_gap, results, elapsed

    with Renderer(LIMITS, workers=2) as pool:
        max_gap, results, elapsed = asyncio.run(scenario(pool))
        assert all(isinstance(result, RenderError) for result in results), results
        # A blocked loop would stall for a whole render timeout; a busy machine, far less.
        assert max_gap < TIMEOUT / 2, max_gap
        # Two rounds of two renders, each stopped at the timeout, plus worker start-ups.
        assert elapsed < 2 * (TIMEOUT + MARGIN)
        assert_still_works(pool)


def test_close_is_idempotent_and_final() -> None:
    pool = Renderer(LIMITS, workers=2)
    assert_still_works(pool)
    processes = [worker.proc for worker in pool._workers]
    pool.close()
    pool.close()
    assert all(process.poll() is not None for process in processes)
    with pytest.raises(RenderError, match="closed"):
        render(pool, "{{ 1 }}")


def test_workers_start_lazily() -> None:
    with Renderer(LIMITS, workers=2) as pool:
        assert not pool._workers
        assert_still_works(pool)
        assert len(pool._workers) == 1


def test_queue_wait_is_bounded() -> None:
    """A render that cannot get a worker within the queue bound fails instead of waiting on."""

    async def scenario(single: Renderer) -> tuple[BaseException | str, BaseException | str]:
        single._queue_wait = 0.3  # normally max(10 s, 10 * timeout)
        results = await asyncio.gather(
            single.render(LOOP_FOREVER, {}), single.render("{{ 1 }}", {}), return_exceptions=True
        )
        return results[0], results[1]

    with Renderer(LIMITS, workers=1) as single:
        assert_still_works(single)
        runaway, queued = asyncio.run(scenario(single))
        assert isinstance(runaway, RenderError) and "longer than" in str(runaway)
        assert isinstance(queued, RenderError) and "no render worker became free" in str(queued)
        assert_still_works(single)


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="needs Linux /proc")
def test_worker_is_limited_niced_and_has_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPIO_TEST_SECRET", "do-not-leak")
    limits = RenderLimits(timeout=TIMEOUT, memory=300 * 2**20)
    with Renderer(limits, workers=1) as single:
        assert_still_works(single)
        (pid,) = worker_pids(single)
        with open(f"/proc/{pid}/limits") as file:
            address_space = next(line for line in file if line.startswith("Max address space"))
        assert str(300 * 2**20) in address_space
        niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
        assert os.getpriority(os.PRIO_PROCESS, pid) >= niceness
        with open(f"/proc/{pid}/environ", "rb") as file:
            assert b"KVPIO_TEST_SECRET" not in file.read()
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
