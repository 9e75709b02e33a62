"""Render user templates safely: a bounded Jinja2 sandbox in killable worker processes.

Templates are hostile input. Three layers keep a render from hurting the server:

1. The Jinja2 ``ImmutableSandboxedEnvironment`` blocks attribute tricks (``__class__``,
   ``str.format`` escapes, mutation of data). On top of it the operators ``**``, ``*`` and
   ``%`` and the ``range`` global are checked *before* they compute, so ``7**(10**7)``,
   ``'a' * 10**8`` or ``range(10**9)`` are refused instantly. So are oversized widths in
   ``str.format`` and ``%`` specs, the str padding methods (``ljust``, ``zfill``, ...) and
   the filters that amplify their input (``center``, ``indent``, ``format``, ``batch``,
   ``slice``). The output is capped while it is generated. Functions, methods and classes
   render as empty text (their repr would show memory addresses), and an output that
   shows one anyway (inside a list, through ``|string``, ``%`` or ``format``) is refused,
   as are such reprs in error messages. Growth these checks do
   not see (``str.replace``, concatenation in a loop) is stopped by the next two layers.
2. Every render runs in a separate worker process: a fresh interpreter started with
   ``subprocess`` (as with the multiprocessing "spawn" context, so it is safe to start from
   a uvicorn worker with a running event loop and threads), using the server's import path
   but importing neither the ``kvpio_mapping`` package nor the server's main module. A
   worker runs with ``RLIMIT_AS`` set to :attr:`RenderLimits.memory` and ``nice(10)``, and
   exits by itself if the server process goes away.
3. The parent waits at most :attr:`RenderLimits.timeout` for the answer, without blocking
   its event loop (the pipes are non-blocking and watched with ``loop.add_reader``). Past
   the timeout the worker is SIGKILLed and a replacement is started. A worker that ran out
   of memory or died is replaced too.

Globals: ``lipsum`` is removed (``lipsum(n=10**6)`` is a cheap way to burn CPU and memory
and no data template needs it). ``range`` is bounded by :attr:`RenderLimits.max_range`.
``cycler``, ``joiner``, ``namespace`` and ``dict`` stay: they only hold template data and
their internals (``__init__``, ``__globals__``) are blocked by the sandbox like any
underscore attribute. ``self`` (the template reference) only renders the template's own
blocks; its internals are blocked the same way.

Queueing: a Renderer has a fixed number of workers, shared fairly between owners (the
server's accounts). Owners waiting for a worker are served in turn, not first come first
served; and an owner with no render in flight who finds every worker busy gets a spare
worker (at most as many spares as workers, each stopped after its render), so one
account's flood of slow renders does not make another's quick render wait for it.
A render first waits for a free worker for at most ``max(10 s, 10 * timeout)`` (the
overall bound, which also covers starting a fresh worker; past it, :class:`RenderBusyError`);
the per-render ``timeout`` counts from the moment the request is handed to a worker. A
caller therefore waits at most that queue bound plus ``timeout``.

The parent and the workers exchange length-prefixed JSON (never pickle), so even a
compromised worker cannot make the parent run code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import re
import string
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jinja2
from jinja2 import ChainableUndefined, meta, pass_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "RenderBusyError",
    "RenderError",
    "RenderLimits",
    "Renderer",
    "SourceTooLargeError",
    "referenced_names",
]


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on one template render; every limit hit becomes a :class:`RenderError`."""

    timeout: float = 2.0  # wall-clock seconds per render; the worker is killed and replaced past it
    memory: int = 512 * 2**20  # RLIMIT_AS of a render worker, bytes
    max_source: int = 64 * 2**10  # bytes of template source (UTF-8)
    max_output: int = 2**20  # characters of rendered output
    #: ``a ** b`` on integers: ``|b| <= max_power`` and the result at most
    #: ``16 * max_power`` bits (estimated as ``|b| * a.bit_length()`` before computing);
    #: the same bit bound applies to ``int * int``.
    max_power: int = 1000
    max_repeat: int = 2**20  # bound on length produced by str/list repetition ('a' * n)
    max_range: int = 100_000  # bound on range() length


DEFAULT_LIMITS = RenderLimits()


class RenderError(Exception):
    """The template cannot be rendered: syntax error, sandbox violation or a limit hit.

    The message says which, for a 422 answer.
    """


class RenderBusyError(RenderError):
    """No render worker became free in time: the server is busy, the template may be fine."""


class SourceTooLargeError(RenderError):
    """The template source is larger than :attr:`RenderLimits.max_source` (a 413 answer)."""


class _LimitExceeded(SecurityError):
    """A bound of :class:`RenderLimits` would be exceeded (raised inside a worker)."""


_MESSAGE_CHARS = 500  # error messages are cut to this length
_QUEUE_WAIT_FACTOR = 10.0  # the queue wait bound is this many render timeouts (at least 10 s)
_HEADER = 8  # frame header: payload length, unsigned big-endian
_CHUNK = 1 << 16


# ---------------------------------------------------------------------------
# The sandbox (used in the workers, and for parsing only in the parent)


def _int_bits_limit(limits: RenderLimits) -> int:
    """The largest integer result, in bits, of ``**`` and ``int * int``."""
    return 16 * limits.max_power


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_power(limits: RenderLimits, left: Any, right: Any) -> None:
    """Refuse an integer ``**`` whose exponent or result is too large, before computing it."""
    if not (_is_int(left) and _is_int(right)):
        return  # floats overflow quickly on their own; other types fail in the operator
    if abs(right) > limits.max_power:
        raise _LimitExceeded(
            f"exponent {right} of ** is larger than the limit of {limits.max_power} (max_power)"
        )
    bits = abs(right) * max(abs(left).bit_length(), 1)
    if right > 0 and abs(left) > 1 and bits > _int_bits_limit(limits):
        raise _LimitExceeded(
            f"the result of ** would have about {bits} bits, more than the limit of "
            f"{_int_bits_limit(limits)} (max_power)"
        )


_SEQUENCE_TYPES = (str, list, tuple)


def _check_multiply(limits: RenderLimits, left: Any, right: Any) -> None:
    """Refuse a repetition or integer product whose result is too large."""
    if _is_int(left) and _is_int(right):
        bits = abs(left).bit_length() + abs(right).bit_length()
        if bits > _int_bits_limit(limits):
            raise _LimitExceeded(
                f"the result of * would have about {bits} bits, more than the limit of "
                f"{_int_bits_limit(limits)} (max_power)"
            )
        return
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, _SEQUENCE_TYPES) and _is_int(count):
            size = len(seq) * count
            if size > limits.max_repeat:
                raise _LimitExceeded(
                    f"repetition would produce {size} items, more than the limit of "
                    f"{limits.max_repeat} (max_repeat)"
                )


def _too_big(digits: str, bound: int) -> bool:
    """Whether a decimal string exceeds ``bound`` (without converting a huge one)."""
    return len(digits) > len(str(bound)) or int(digits) > bound


# A printf directive: optional mapping key, flags, width, precision.
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_printf(limits: RenderLimits, fmt: str) -> None:
    """Refuse ``%`` formatting with a ``*`` or an oversized field width or precision."""
    for match in _PRINTF.finditer(fmt):
        for field in match.groups():
            if field == "*":
                raise _LimitExceeded("'*' widths in % formatting are not allowed")
            if field and _too_big(field, limits.max_repeat):
                raise _LimitExceeded(
                    f"field width {field} in % formatting is larger than the limit of "
                    f"{limits.max_repeat} (max_repeat)"
                )


# str methods whose first argument is the length of the result.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_NUMBER = re.compile(r"\d+")


def _check_format_string(limits: RenderLimits, fmt: str) -> None:
    """Refuse ``str.format`` specs with nested fields or widths over max_repeat."""
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise _LimitExceeded("nested fields in a str.format spec are not allowed")
        for number in _NUMBER.findall(spec):
            if _too_big(number, limits.max_repeat):
                raise _LimitExceeded(
                    f"width {number} in str.format is larger than the limit of "
                    f"{limits.max_repeat} (max_repeat)"
                )


def _check_count(limits: RenderLimits, what: str, count: Any) -> None:
    """Refuse a filter argument that sets the size of its result above max_repeat."""
    if _is_int(count) and count > limits.max_repeat:
        raise _LimitExceeded(
            f"{what} of {count} is larger than the limit of {limits.max_repeat} (max_repeat)"
        )


def _bounded_filters(env: _Sandbox) -> None:
    """Wrap the built-in filters that can amplify their input (center, indent, ...)."""
    limits = env.limits
    center, indent, fmt = env.filters["center"], env.filters["indent"], env.filters["format"]
    batch, slice_ = env.filters["batch"], env.filters["slice"]

    def do_center(value: Any, width: int = 80) -> Any:
        _check_count(limits, "center width", width)
        return center(value, width)

    def do_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        if _is_int(width):
            lines = str(value).count("\n") + 1
            _check_count(limits, "indent width times lines", width * lines)
        return indent(value, width, *args, **kwargs)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(limits, str(value))
        return fmt(value, *args, **kwargs)

    def do_batch(value: Any, linecount: int, *args: Any, **kwargs: Any) -> Any:
        _check_count(limits, "batch size", linecount)
        return batch(value, linecount, *args, **kwargs)

    def do_slice(value: Any, slices: int, *args: Any, **kwargs: Any) -> Any:
        _check_count(limits, "slice count", slices)
        return slice_(value, slices, *args, **kwargs)

    env.filters.update(
        center=do_center, indent=do_indent, format=do_format, batch=do_batch, slice=do_slice
    )


def _hide_callables(value: Any) -> Any:
    """Render functions, methods and classes as empty text (their repr shows addresses)."""
    if callable(value) and not isinstance(value, jinja2.Undefined):
        return ""
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the :class:`RenderLimits` checks the sandbox lacks."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, limits: RenderLimits) -> None:
        super().__init__(
            autoescape=False, undefined=ChainableUndefined, loader=None, finalize=_hide_callables
        )
        self.limits = limits
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._bounded_range
        _bounded_filters(self)

    def _bounded_range(self, *args: int) -> range:
        """``range`` with at most :attr:`RenderLimits.max_range` items."""
        rng = range(*args)
        if len(rng) > self.limits.max_range:
            raise _LimitExceeded(
                f"range() of {len(rng)} items is longer than the limit of "
                f"{self.limits.max_range} (max_range)"
            )
        return rng

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        """Check the bounds of ``**``, ``*`` and ``%`` before computing them."""
        if operator == "**":
            _check_power(self.limits, left, right)
        elif operator == "*":
            _check_multiply(self.limits, left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(self.limits, left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Refuse str padding methods asked for a result longer than max_repeat."""
        if (
            isinstance(getattr(obj, "__self__", None), str)
            and getattr(obj, "__name__", None) in _PADDING_METHODS
        ):
            for value in (*args, *kwargs.values()):
                if _is_int(value) and value > self.limits.max_repeat:
                    raise _LimitExceeded(
                        f"str.{obj.__name__}({value}) is longer than the limit of "
                        f"{self.limits.max_repeat} (max_repeat)"
                    )
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's safe ``str.format``, refusing oversized or nested specs first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = str(value.__self__)
        limits = self.limits

        @functools.wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(limits, fmt)
            return wrapped(*args, **kwargs)

        return checked

    def get_template(self, *args: Any, **kwargs: Any) -> jinja2.Template:
        """Templates cannot load other templates (include, import, extends)."""
        raise SecurityError("include, import and extends are not available in templates")

    select_template = get_template
    get_or_select_template = get_template


@pass_context
def _parse_only(*args: Any, **kwargs: Any) -> Any:
    """Stand-in filter/test for parsing: marked context-dependent, so never folded."""
    raise RuntimeError("parse-only environment")  # pragma: no cover


@functools.lru_cache(maxsize=8)
def _parse_env(limits: RenderLimits) -> _Sandbox:
    """A sandbox for parsing in the server process.

    Its filters and tests are inert stand-ins: Jinja2 folds constant filter calls while
    compiling (``{{ 'a'|center(1000000000) }}``), which must never run in the server.
    """
    env = _Sandbox(limits)
    env.filters = {name: _parse_only for name in env.filters}
    env.tests = {name: _parse_only for name in env.tests}
    return env


def _check_size(source: str, limits: RenderLimits) -> None:
    """Raise SourceTooLargeError if the UTF-8 source exceeds max_source."""
    # Cheap bounds first: each character is 1..4 bytes in UTF-8.
    if len(source) <= limits.max_source // 4:
        return
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_source:
        raise SourceTooLargeError(
            f"template source is {size} bytes, more than the limit of "
            f"{limits.max_source} (max_source)"
        )


# What the repr of an internal object looks like: a function, method or class, or any
# object shown with its memory address.
_INTERNAL_REPR = re.compile(
    r"<(?:bound method|built-in method|built-in function|function|method-wrapper|slot wrapper"
    r"|method|classmethod|staticmethod|class|module|generator|coroutine|cell) [^<>]*"
    r"| at 0x[0-9A-Fa-f]+>"
)
_HIDDEN = "an internal object"


def _shows_internals(text: str, source: str, context: dict[str, Any]) -> bool:
    """Whether ``text`` holds an internal repr that its source and data do not hold already.

    The sandbox hides callables only where it sees them (a whole ``{{ }}`` value); inside
    a list, a ``|string``, a ``%`` or ``format`` they are converted by Python's repr, so the
    finished output is checked. Text the template or its data supplies reveals nothing.
    """
    found = {match.group() for match in _INTERNAL_REPR.finditer(text)}
    if not found:
        return False
    known = source + json.dumps(context, ensure_ascii=False)
    return any(piece not in known for piece in found)


def _syntax_message(exc: TemplateSyntaxError) -> str:
    return _clip(f"template syntax error on line {exc.lineno}: {exc.message}")


def _clip(message: str) -> str:
    """Cut a message to a bounded length, hide internal reprs, make it encodable as UTF-8."""
    message = _INTERNAL_REPR.sub(_HIDDEN, message)
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 3] + "..."
    return message.encode("utf-8", "replace").decode("utf-8")


@functools.lru_cache(maxsize=256)
def _names(source: str, limits: RenderLimits) -> frozenset[str] | str:
    """The names, or the error message: failures are cached too, as parsing is not free."""
    try:
        ast = _parse_env(limits).parse(source)
        return frozenset(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        return _syntax_message(exc)
    except RecursionError:
        return "template is nested too deeply"
    except jinja2.TemplateError as exc:
        return _clip(f"template error: {exc}")


def referenced_names(source: str, limits: RenderLimits = DEFAULT_LIMITS) -> frozenset[str]:
    """Top-level names the template reads (jinja2.meta.find_undeclared_variables).

    Cached by source. Raises RenderError on a syntax error, SourceTooLargeError over
    max_source. Parsing runs in the calling thread (up to a few tenths of a second for a
    hostile 64 KiB source) but evaluates nothing.
    """
    _check_size(source, limits)
    names = _names(source, limits)
    if isinstance(names, str):
        raise RenderError(names)
    return names


# ---------------------------------------------------------------------------
# The worker process


def _render_in_worker(
    compile_source: Callable[[str], jinja2.Template],
    limits: RenderLimits,
    source: str,
    context: dict[str, Any],
) -> dict[str, Any]:
    """Render one request; the reply is ``{"text": ...}`` or ``{"error": ...}``."""
    try:
        template = compile_source(source)
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > limits.max_output:
                raise _LimitExceeded(
                    f"output is longer than the limit of {limits.max_output} characters "
                    "(max_output)"
                )
            parts.append(chunk)
        text = "".join(parts)
        if _shows_internals(text, source, context):
            return {
                "error": "template not allowed: its output would show an internal object"
                " (a function, method or class, not a value)"
            }
        return {"text": text.encode("utf-8", "replace").decode("utf-8")}
    except MemoryError:
        return {
            "error": f"render ran out of memory (limit {limits.memory // 2**20} MiB)",
            "retire": True,
        }
    except RecursionError:
        return {"error": "template recursion is too deep"}
    except TemplateSyntaxError as exc:
        return {"error": _syntax_message(exc)}
    except _LimitExceeded as exc:
        return {"error": _clip(f"template limit exceeded: {exc}")}
    except SecurityError as exc:
        return {"error": _clip(f"template not allowed: {exc}")}
    except jinja2.TemplateError as exc:
        return {"error": _clip(f"template error: {exc}")}
    except OverflowError:  # its text is the C library's, such as "(34, 'Numerical result...')"
        return {"error": "template failed: a number is out of range"}
    except Exception as exc:
        return {"error": _clip(f"template failed: {exc}")}


def _read_exact(fd: int, size: int) -> bytes | None:
    """Blocking read of exactly ``size`` bytes; None at end of file."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, min(size - len(data), _CHUNK))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _encode(message: dict[str, Any], ascii_only: bool = False) -> bytes:
    """A frame: length header and UTF-8 JSON (ASCII-escaped when it may hold surrogates)."""
    payload = json.dumps(message, ensure_ascii=ascii_only).encode("utf-8")
    return len(payload).to_bytes(_HEADER, "big") + payload


def _watch_parent(parent: int) -> None:
    """Exit the worker when the server process is gone (even mid-render)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(limits_json: str, parent: int) -> None:
    """Serve render requests on stdin/stdout until the parent closes the pipe."""
    import resource  # POSIX only; the worker is only started on POSIX

    limits = RenderLimits(**json.loads(limits_json))
    # Keep the protocol pipes private: stray prints go to stderr, stdin reads /dev/null.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(ValueError, OSError):  # no new processes or threads from here
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    memory = limits.memory if hard == resource.RLIM_INFINITY else min(limits.memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory, hard))

    env = _Sandbox(limits)
    compile_source = functools.lru_cache(maxsize=64)(env.from_string)
    _write_all(out_fd, _encode({"ready": True}))
    while True:
        header = _read_exact(in_fd, _HEADER)
        if header is None:
            return
        payload = _read_exact(in_fd, int.from_bytes(header, "big"))
        if payload is None:
            return
        request = json.loads(payload)
        reply = _render_in_worker(compile_source, limits, request["source"], request["context"])
        del request, payload
        _write_all(out_fd, _encode(reply))
        if reply.get("retire"):
            return


# ---------------------------------------------------------------------------
# The parent side


class _Deadline(Exception):
    """A pipe operation did not finish before its deadline."""


class _WorkerGone(Exception):
    """The worker closed its pipe or sent garbage."""


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, write: bool, deadline: float) -> None:
    """Wait without blocking the loop until ``fd`` is ready, at most until ``deadline``."""
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise _Deadline
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, remaining)
    except asyncio.TimeoutError:
        raise _Deadline from None
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _send(loop: asyncio.AbstractEventLoop, fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _wait_fd(loop, fd, True, deadline)
        except OSError as exc:  # broken pipe: the worker died
            raise _WorkerGone(str(exc)) from None


async def _receive(
    loop: asyncio.AbstractEventLoop, fd: int, deadline: float, max_size: int
) -> dict[str, Any]:
    """Read one frame without blocking the loop; the whole frame must arrive by ``deadline``."""
    buffer = bytearray()
    need = _HEADER
    have_header = False
    while True:
        while len(buffer) < need:
            try:
                chunk = os.read(fd, min(need - len(buffer), _CHUNK))
            except BlockingIOError:
                await _wait_fd(loop, fd, False, deadline)
                continue
            except OSError as exc:
                raise _WorkerGone(str(exc)) from None
            if not chunk:
                raise _WorkerGone("the render worker stopped unexpectedly")
            buffer += chunk
        if have_header:
            break
        need = int.from_bytes(buffer, "big")
        if need > max_size:
            raise _WorkerGone("the render worker sent an oversized reply")
        buffer.clear()
        have_header = True
    try:
        message = json.loads(buffer)
    except ValueError:
        raise _WorkerGone("the render worker sent a malformed reply") from None
    if not isinstance(message, dict):
        raise _WorkerGone("the render worker sent a malformed reply")
    return message


# The worker runs this file in a fresh interpreter, with the server's import path (so it
# uses the same Jinja2) but without importing the kvpio_mapping package or the server's
# main module.
_BOOT = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "sys.argv = [sys.argv[2], '--worker', *sys.argv[3:]]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


class _Worker:
    """One worker process and the parent's ends of its pipes."""

    def __init__(self, limits: RenderLimits) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                _BOOT,
                json.dumps([entry or os.getcwd() for entry in sys.path]),
                os.path.abspath(__file__),
                json.dumps(asdict(limits)),
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            cwd="/",
            env={"PATH": os.defpath},  # no server secrets in a worker's environment
            start_new_session=True,  # a Ctrl-C on the server's terminal is not for workers
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.send_fd = self.proc.stdin.fileno()
        self.recv_fd = self.proc.stdout.fileno()
        os.set_blocking(self.send_fd, False)
        os.set_blocking(self.recv_fd, False)
        self.ready = False
        self.closed = False

    def kill(self) -> None:
        """SIGKILL the process and close the pipes (idempotent); reaping happens later."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def reaped(self) -> bool:
        """True once the killed process has been waited for."""
        return self.proc.poll() is not None


def _shutdown(workers: set[_Worker], dying: list[_Worker]) -> None:
    """Kill and reap every worker (runs from close(), garbage collection or atexit)."""
    everyone = [*workers, *dying]
    workers.clear()
    dying.clear()
    for worker in everyone:
        worker.kill()
    for worker in everyone:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            worker.proc.wait(timeout=2.0)


class Renderer:
    """Renders templates in a small pool of sandboxed, killable worker processes.

    Create one per server process; ``await render(source, context)`` from its event loop
    (one loop at a time); ``close()`` at shutdown (also run at interpreter exit). Workers are
    started on the first render and replaced whenever one is killed or dies.
    """

    def __init__(self, limits: RenderLimits = DEFAULT_LIMITS, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError("a Renderer needs at least one worker")
        self.limits = limits
        self._size = workers
        self._queue_wait = max(10.0, _QUEUE_WAIT_FACTOR * limits.timeout)
        self._max_reply = 6 * limits.max_output + _CHUNK
        self._workers: set[_Worker] = set()  # alive: idle or busy
        self._idle: list[_Worker] = []
        self._dying: list[_Worker] = []  # killed, not yet reaped
        self._spares = workers  # extra workers at most, for owners who hold none
        self._busy: collections.Counter[str] = collections.Counter()  # workers held, by owner
        # Waiting renders by owner; owners are served in turn (the dict's order).
        self._waiters: dict[str, collections.deque[asyncio.Future[_Worker]]] = {}
        self._closed = False
        self.killed = 0
        """Workers killed so far (over time, over memory, broken): for the server's metrics."""
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._dying)

    @property
    def waiting(self) -> int:
        """Renders waiting in line for a free worker now."""
        return len(self._waiters)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (idempotent); pending renders fail with RenderError."""
        self._closed = True
        self._idle.clear()
        for queue in self._waiters.values():
            for waiter in queue:
                if not waiter.done():
                    with contextlib.suppress(RuntimeError):
                        waiter.set_exception(RenderError("the renderer is closed"))
        self._waiters.clear()
        self._finalizer()

    async def render(self, source: str, context: dict[str, Any], owner: str = "") -> str:
        """Render ``source`` with ``context`` (plain JSON data); raises RenderError.

        Renders are fair between owners (accounts): see the module's notes on queueing.
        """
        _check_size(source, self.limits)
        if self._closed:
            raise RenderError("the renderer is closed")
        request = _encode({"source": source, "context": context}, ascii_only=True)
        loop = asyncio.get_running_loop()
        queue_deadline = loop.time() + self._queue_wait
        worker = await self._acquire(loop, queue_deadline, owner)
        healthy = False
        try:
            if not worker.ready:
                await self._wait_ready(loop, worker, queue_deadline)
            deadline = loop.time() + self.limits.timeout
            try:
                await _send(loop, worker.send_fd, request, deadline)
                reply = await _receive(loop, worker.recv_fd, deadline, self._max_reply)
            except _Deadline:
                raise RenderError(f"render took longer than {self.limits.timeout} s") from None
            except _WorkerGone as exc:
                raise RenderError(_clip(str(exc))) from None
            healthy = not reply.get("retire")
        finally:
            self._done(owner)
            if healthy:
                self._release(worker)
            else:
                self._discard(worker)
        text, error = reply.get("text"), reply.get("error")
        if isinstance(text, str):
            return text
        raise RenderError(error if isinstance(error, str) else "the render worker failed")

    async def _wait_ready(
        self, loop: asyncio.AbstractEventLoop, worker: _Worker, deadline: float
    ) -> None:
        """Wait for a new worker's hello, so its start-up is not charged to the render."""
        try:
            hello = await _receive(loop, worker.recv_fd, deadline, _CHUNK)
        except _Deadline:
            raise RenderError(f"no render worker started within {self._queue_wait} s") from None
        except _WorkerGone:
            raise RenderError("the render worker failed to start") from None
        if hello.get("ready") is not True:
            raise RenderError("the render worker failed to start")
        worker.ready = True

    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self.limits)
        except OSError as exc:
            raise RenderError(f"cannot start a render worker: {exc}") from None
        self._workers.add(worker)
        return worker

    def _reap(self) -> None:
        self._dying[:] = [worker for worker in self._dying if not worker.reaped()]

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, owner: str
    ) -> _Worker:
        """A free worker, starting one if the pool is not full, else wait in line."""
        self._reap()
        if not self._waiters.get(owner):
            worker = self._free()
            if (
                worker is None
                and not self._busy[owner]
                and len(self._workers) < self._size + self._spares
            ):
                worker = self._spawn()  # a spare, so a flood of another owner's renders waits
            if worker is not None:
                self._busy[owner] += 1
                return worker
        waiter: asyncio.Future[_Worker] = loop.create_future()
        self._waiters.setdefault(owner, collections.deque()).append(waiter)
        try:
            return await asyncio.wait_for(waiter, max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            self._reclaim(owner, waiter)
            raise RenderBusyError(
                f"no render worker became free within {self._queue_wait} s"
            ) from None
        except BaseException:
            self._reclaim(owner, waiter)
            raise

    def _free(self) -> _Worker | None:
        """An idle live worker, or a new one if the pool is not full, or None."""
        while self._idle:
            worker = self._idle.pop()
            if worker.proc.poll() is None:
                return worker
            self._discard(worker)  # died while idle: replaced, try the next one
        if len(self._workers) < self._size:
            return self._spawn()
        return None

    def _done(self, owner: str) -> None:
        """``owner`` gave back a worker."""
        self._busy[owner] -= 1
        if self._busy[owner] <= 0:
            del self._busy[owner]

    def _reclaim(self, owner: str, waiter: asyncio.Future[_Worker]) -> None:
        """Drop an abandoned waiter; a worker handed to it at the last moment is passed on."""
        queue = self._waiters.get(owner)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                del self._waiters[owner]
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._done(owner)
            self._release(waiter.result())

    def _release(self, worker: _Worker) -> None:
        """Give a healthy worker to the next owner in line, or keep it idle (a spare stops)."""
        if self._closed or worker.closed or len(self._workers) > self._size:
            self._discard(worker)
            return
        for owner in list(self._waiters):
            queue = self._waiters[owner]
            while queue and queue[0].done():
                queue.popleft()  # abandoned: timed out or cancelled
            if not queue:
                del self._waiters[owner]
                continue
            waiter = queue.popleft()
            del self._waiters[owner]
            if queue:
                self._waiters[owner] = queue  # to the back of the line
            self._busy[owner] += 1
            waiter.set_result(worker)
            return
        self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker whose state is unknown and start its replacement."""
        worker.kill()
        if worker in self._workers:
            self._workers.discard(worker)
            self._dying.append(worker)
            self.killed += 1
        if self._closed:
            return
        self._reap()
        if len(self._workers) < self._size:
            try:
                replacement = self._spawn()
            except RenderError:
                return
            self._release(replacement)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(sys.argv[2], int(sys.argv[3]))
