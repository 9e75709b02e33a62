"""The ``kvpio`` command line: the 2016 commands, bucket export/import, and the server's.

Every command talks to the server through :class:`~kvpio_mapping.transport.Transport`
and needs the raw answers (a missing value is a 200 with an empty body), so
it does not go through the mapping classes. Results go to stdout, errors to
stderr as one line ``kvpio: <reason>``, and the exit status says what failed
(see :data:`EPILOG`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TextIO

import requests

from . import __version__, paths, protocol, values
from .errors import (
    AuthenticationError,
    InvalidPathError,
    KvpioError,
    KvpioTimeoutError,
    ProtocolError,
    RequestError,
    ServerError,
    TransportError,
)
from .paths import MISSING
from .server.commands import add_commands
from .terminal import NotConfirmed, confirm, is_terminal
from .transport import DEFAULT_TIMEOUT, DEFAULT_URL, Transport, nothing_sent

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_UNREACHABLE: Final = 4
EXIT_INTERRUPTED: Final = 130

DEFAULT_BATCH_SIZE: Final = 500

EPILOG: Final = f"""\
examples:
  export KVPIO_APIKEY=<your api key>
  kvpio bucket set foo '{{"bar": {{"baz": 123}}}}'
  kvpio bucket get foo/bar/baz                  # 123
  kvpio template set greet 'baz is {{{{ foo.bar.baz }}}}'
  kvpio template get greet                      # baz is 123
  kvpio account

server and API key:
  --url, else $KVPIO_URL, else {DEFAULT_URL}
  --api-key, else $KVPIO_APIKEY, else the first line of ~/.kvpio
  --timeout S bounds each request to the server, retries included (default {DEFAULT_TIMEOUT:g})

exit status:
  {EXIT_OK}    success
  {EXIT_FAILED}    the command failed: no such key or template, input the server
       refused (its message is shown), a local file or JSON that is not valid
  {EXIT_USAGE}    the command line is wrong, or a destructive command was not confirmed
  {EXIT_AUTH}    no API key was given, or the server does not know it
  {EXIT_UNREACHABLE}    the server cannot be reached, did not answer in time, failed (5xx),
       or is not a kvpio v1 server
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


class CommandError(Exception):
    """A failure to report as ``kvpio: <message>`` with exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.maybe_sent = maybe_sent  # the request may have taken effect without an answer


# ---------------------------------------------------------------- output


def format_json(value: Any, pretty: bool) -> str:
    """A value as JSON text: indented for a person, one line for a pipe."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def print_json(value: Any) -> None:
    """Print a value to stdout, pretty when stdout is a terminal."""
    sys.stdout.write(format_json(value, is_terminal(sys.stdout)) + "\n")


def print_text(text: str) -> None:
    """Print text as it is, ending it with a newline if it has none."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    It reads ``{doing} [###---] {done}/{total} {unit}``, then ``note`` if given.
    """

    WIDTH: Final = 30

    def __init__(self, total: int, stream: TextIO, doing: str, unit: str) -> None:
        self.total = total
        self.stream = stream
        self.doing = doing
        self.unit = unit
        self.enabled = is_terminal(stream) and total > 0

    def update(self, done: int, note: str = "") -> None:
        """Redraw the bar for ``done`` of ``total``."""
        if not self.enabled:
            return
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"\r{self.doing} [{bar}] {done}/{self.total} {self.unit}"
        self.stream.write(line + (f", {note}" if note else ""))
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line so later messages start on their own."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- talking to the server


def _transport(args: argparse.Namespace) -> Transport:
    """The transport for ``--url``/``--api-key``/``--timeout`` (or their fallbacks)."""
    try:
        return Transport(args.url, args.api_key, timeout=args.timeout)
    except AuthenticationError:
        raise CommandError(
            "no API key: pass --api-key, set KVPIO_APIKEY or put it on the first line of ~/.kvpio",
            EXIT_AUTH,
        ) from None


def _call(
    transport: Transport,
    request: protocol.Request,
    read: Callable[[requests.Response], Any] = protocol.check,
) -> Any:
    """Send a request :mod:`~kvpio_mapping.protocol` built and return what ``read`` (one of
    its rules) makes of the answer; any failure becomes a :class:`CommandError`.

    The transport resends only what is safe to send twice (never a list item's delete).
    """
    try:
        return read(transport.send(request))
    except KvpioError as exc:
        raise _command_error(exc, transport.url) from None


def _object(response: requests.Response) -> Any:
    return protocol.document(response, dict)


def _command_error(exc: KvpioError, url: str) -> CommandError:
    """The one-line message and exit status for an error of this package."""
    if isinstance(exc, AuthenticationError):
        return CommandError("the server does not know this API key", EXIT_AUTH)
    if isinstance(exc, KvpioTimeoutError):
        return CommandError(
            f"the server at {url} did not answer in time", EXIT_UNREACHABLE, maybe_sent=True
        )
    if isinstance(exc, ProtocolError):
        return CommandError(str(exc), EXIT_UNREACHABLE, maybe_sent=True)
    if isinstance(exc, ServerError):
        return CommandError(str(exc), EXIT_UNREACHABLE, maybe_sent=True)
    if isinstance(exc, TransportError):
        return CommandError(
            f"cannot reach the server at {url}", EXIT_UNREACHABLE, maybe_sent=_maybe_sent(exc)
        )
    if isinstance(exc, RequestError):
        return CommandError(exc.message)
    return CommandError(str(exc))


def _maybe_sent(exc: TransportError) -> bool:
    """Whether the failed request may have reached the server (not so if it never connected)."""
    cause = exc.__cause__
    return not (isinstance(cause, requests.RequestException) and nothing_sent(cause))


def _path(key: str) -> str:
    """``key`` as a checked full path; invalid paths fail here."""
    try:
        return paths.join(paths.parse(key))
    except InvalidPathError as exc:
        raise CommandError(str(exc)) from None


def _parse_json(text: str, what: str) -> Any:
    try:
        return values.decode(text)
    except ValueError as exc:
        raise CommandError(f"{what} is not valid JSON: {exc}") from None


def _read_json_file(name: str) -> Any:
    """The JSON value in file ``name`` (``-`` for stdin)."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return values.decode(data)
    except ValueError as exc:
        raise CommandError(f"{name} is not valid JSON: {exc}") from None


# ---------------------------------------------------------------- commands


def cmd_account(args: argparse.Namespace) -> int:
    """Print the account's id, email, reads and size."""
    print_json(_call(_transport(args), protocol.account(), read=_object))
    return EXIT_OK


def cmd_bucket_list(args: argparse.Namespace) -> int:
    """Print the bucket's top-level keys, or the child keys at PATH."""
    request = protocol.list_keys("" if args.path is None else _path(args.path))
    print_json(_call(_transport(args), request, read=protocol.keys))
    return EXIT_OK


def cmd_bucket_clear(args: argparse.Namespace) -> int:
    """Delete every key of the bucket (its templates stay)."""
    transport = _transport(args)
    try:
        confirm(f"Delete every key in the bucket at {transport.url}?", args.yes)
    except NotConfirmed as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    _call(transport, protocol.clear(), protocol.done)
    return EXIT_OK


def cmd_bucket_get(args: argparse.Namespace) -> int:
    """Print the value at KEY."""
    found = _call(_transport(args), protocol.read(_path(args.key)), read=protocol.value)
    if found is MISSING:
        raise CommandError(f"no such key: {args.key}")
    print_json(found)
    return EXIT_OK


def cmd_bucket_set(args: argparse.Namespace) -> int:
    """Store VALUE (JSON, else a string) or the JSON in --file at KEY."""
    if args.file is not None and args.value is not None:
        raise CommandError("give VALUE or --file, not both", EXIT_USAGE)
    if args.file is not None:
        value = _read_json_file(args.file)
    elif args.value is not None:
        try:
            value = values.decode(args.value)
        except ValueError:
            value = args.value
    else:
        raise CommandError("give VALUE or --file", EXIT_USAGE)
    full = _path(args.key)
    try:
        body = values.encode(value, addressable=True)
    except InvalidPathError as exc:
        raise CommandError(f"cannot store {args.key}: {exc}") from None
    _call(_transport(args), protocol.write(full, body), protocol.done)
    return EXIT_OK


def cmd_bucket_del(args: argparse.Namespace) -> int:
    """Delete KEY and everything below it."""
    _call(_transport(args), protocol.delete(_path(args.key)), protocol.done)
    return EXIT_OK


def cmd_bucket_export(args: argparse.Namespace) -> int:
    """Print (or write to --output) the whole bucket, or the value at PATH, as JSON."""
    transport = _transport(args)
    if args.path is None:
        value = _call(transport, protocol.snapshot(), read=_object)
    else:
        value = _call(transport, protocol.read(_path(args.path)), read=protocol.value)
        if value is MISSING:
            raise CommandError(f"no such key: {args.path}")
    if args.output is None or args.output == "-":
        print_json(value)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(format_json(value, pretty=False) + "\n")
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return EXIT_OK


def _batches(items: list[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _written(written: int, total: int, failed: int, maybe_sent: bool) -> str:
    """What a failed import left behind: the batches before ``failed``, each in full.

    When the failed batch reached the server but no answer came back, it may
    have been stored (all of it: a batch is one transaction).
    """
    perhaps = f"except perhaps batch {failed} in full" if maybe_sent else ""
    if failed == 1:
        return f"nothing was written{' ' + perhaps if perhaps else ''} (0 of {total} keys)"
    batches = "batch 1" if failed == 2 else f"batches 1-{failed - 1}"
    after = perhaps.replace("except perhaps", "and perhaps") if perhaps else "nothing after"
    return f"{batches} ({written} of {total} keys) written, {after}"


def cmd_bucket_import(args: argparse.Namespace) -> int:
    """Store every top-level entry of FILE's JSON object, under PATH if given, in batches."""
    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1", EXIT_USAGE)
    prefix: paths.Path = ()
    if args.path is not None:
        try:
            prefix = paths.parse(args.path)
        except InvalidPathError as exc:
            raise CommandError(str(exc)) from None
    data = _read_json_file(args.file)
    if not isinstance(data, dict):
        raise CommandError(f"{args.file} must hold a JSON object, not {type(data).__name__}")
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        segments = (*prefix, key)
        try:
            paths.check(segments)
            values.check(value, addressable=True)
        except InvalidPathError as exc:
            raise CommandError(f"cannot import key {key!r}: {exc}; nothing was written") from None
        items.append((paths.join(segments), value))
    transport = _transport(args)
    batches = list(_batches(items, args.batch_size))
    progress = Progress(len(items), sys.stderr, "importing", "keys")
    written = 0
    for number, batch in enumerate(batches, 1):
        progress.update(written, f"batch {number}/{len(batches)}")
        try:
            _call(transport, protocol.write_many(batch), protocol.done)
        except (CommandError, KeyboardInterrupt) as exc:
            progress.finish()
            if isinstance(exc, CommandError):
                reason, code, maybe_sent = exc.message, exc.code, exc.maybe_sent
            else:
                reason, code, maybe_sent = "interrupted", EXIT_INTERRUPTED, True
            raise CommandError(
                f"import failed at batch {number} of {len(batches)}: {reason}; "
                + _written(written, len(items), number, maybe_sent),
                code,
            ) from None
        written += len(batch)
    progress.update(written, f"batch {len(batches)}/{len(batches)}")
    progress.finish()
    keys = "1 key" if written == 1 else f"{written} keys"
    requests_made = "1 batch" if len(batches) == 1 else f"{len(batches)} batches"
    sys.stderr.write(f"imported {keys} in {requests_made}\n")
    return EXIT_OK


def cmd_template_list(args: argparse.Namespace) -> int:
    """Print the names of the stored templates."""
    print_json(_call(_transport(args), protocol.list_templates(), read=protocol.keys))
    return EXIT_OK


def cmd_template_get(args: argparse.Namespace) -> int:
    """Print template NAME rendered (with --data overriding bucket values) or --raw."""
    body = None
    if args.data is not None and not args.raw:
        data = _parse_json(args.data, "--data")
        if not isinstance(data, dict):
            raise CommandError("--data must be a JSON object of names to values")
        body = values.encode(data)
    request = protocol.template(_path(args.name), raw=args.raw, data=body)
    found = _call(_transport(args), request, read=protocol.text)
    if found is MISSING:
        raise CommandError(f"no such template: {args.name}")
    print_text(found)
    return EXIT_OK


def cmd_template_set(args: argparse.Namespace) -> int:
    """Store TEMPLATE under NAME."""
    _call(_transport(args), protocol.write_template(_path(args.name), args.template), protocol.done)
    return EXIT_OK


def cmd_template_del(args: argparse.Namespace) -> int:
    """Delete template NAME."""
    _call(_transport(args), protocol.delete_template(_path(args.name)), protocol.done)
    return EXIT_OK


# ---------------------------------------------------------------- the parser

Handler = Callable[[argparse.Namespace], int]


def _connection_options() -> argparse.ArgumentParser:
    """``--url`` and ``--api-key``, accepted before or after the command."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"server URL (default: $KVPIO_URL, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="API key (default: $KVPIO_APIKEY, else the first line of ~/.kvpio)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="S",
        help=_TIMEOUT_HELP,
    )
    return parent


_TIMEOUT_HELP: Final = (
    f"seconds a request may take, retries included (default: {DEFAULT_TIMEOUT:g})"
)


def _seconds(text: str) -> float:
    """``--timeout``'s value: a positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 seconds: {text!r}")
    return seconds


def _add(
    subparsers: Any,
    name: str,
    handler: Handler,
    help: str,
    example: str,
    parents: Sequence[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"examples:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    parser.set_defaults(func=handler)
    return parser


def _group(subparsers: Any, name: str, help: str, example: str) -> Any:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"examples:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The ``kvpio`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="kvpio",
        description="Read and write a kvp.io v1 bucket and its templates; run the server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvpio {__version__}")
    parser.add_argument(
        "--url", default=None, help=f"server URL (default: $KVPIO_URL, else {DEFAULT_URL})"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key (default: $KVPIO_APIKEY, else the first line of ~/.kvpio)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="S", help=_TIMEOUT_HELP
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    conn = [_connection_options()]

    _add(
        commands,
        "account",
        cmd_account,
        "show the account's id, email, reads and size",
        "  kvpio account",
        conn,
    )

    bucket = _group(
        commands,
        "bucket",
        "read and write key/value pairs",
        "  kvpio bucket set foo '{\"bar\": [1, 2]}'\n  kvpio bucket get foo/bar/2",
    )
    blist = _add(
        bucket,
        "list",
        cmd_bucket_list,
        "list the bucket's top-level keys, or those at PATH",
        "  kvpio bucket list\n  kvpio bucket list users/ada\n\n"
        "On a list the keys are its 1-based positions; a scalar or a missing PATH has none.",
        conn,
    )
    blist.add_argument("path", metavar="PATH", nargs="?", help="list the child keys at PATH")
    get = _add(
        bucket,
        "get",
        cmd_bucket_get,
        "print the value at KEY as JSON",
        "  kvpio bucket get foo/bar/baz\n\n"
        "KEY is a path: segments separated by '/'; on a list a segment is a\n"
        "1-based position. A missing key is an error (exit 1).",
        conn,
    )
    get.add_argument("key", metavar="KEY", help="a key path, e.g. users/ada/born")
    setp = _add(
        bucket,
        "set",
        cmd_bucket_set,
        "store VALUE (or the JSON in --file) at KEY",
        '  kvpio bucket set foo \'{"bar": {"baz": 123}}\'\n'
        "  kvpio bucket set greeting hello        # not JSON: stored as a string\n"
        "  kvpio bucket set config --file config.json\n\n"
        "VALUE is parsed as JSON, and stored as a plain string when it is not JSON.",
        conn,
    )
    setp.add_argument("key", metavar="KEY")
    setp.add_argument("value", metavar="VALUE", nargs="?")
    setp.add_argument("--file", metavar="F", help="read the value as JSON from F ('-': stdin)")
    delp = _add(
        bucket,
        "del",
        cmd_bucket_del,
        "delete KEY and everything below it",
        "  kvpio bucket del foo/bar",
        conn,
    )
    delp.add_argument("key", metavar="KEY")
    clear = _add(
        bucket,
        "clear",
        cmd_bucket_clear,
        "delete every key of the bucket (templates stay)",
        "  kvpio bucket clear          # asks first on a terminal\n"
        "  kvpio bucket clear --yes    # in a script",
        conn,
    )
    clear.add_argument(
        "--yes", action="store_true", help="do not ask (needed when not on a terminal)"
    )
    export = _add(
        bucket,
        "export",
        cmd_bucket_export,
        "print the whole bucket, or the value at PATH, as JSON",
        "  kvpio bucket export --output backup.json\n"
        "  kvpio bucket export users/alice > alice.json",
        conn,
    )
    export.add_argument("path", metavar="PATH", nargs="?", help="export only the value at PATH")
    export.add_argument("--output", metavar="F", help="write to F instead of stdout")
    imp = _add(
        bucket,
        "import",
        cmd_bucket_import,
        "store every top-level entry of a JSON object file (under PATH if given)",
        "  kvpio bucket import backup.json\n"
        "  kvpio bucket import alice.json users/alice\n\n"
        "Entries are sent in batches of --batch-size keys; each batch is stored\n"
        "all or nothing. Keys not in the file are left as they are. If a batch\n"
        "fails, the message says how many keys were written before it.",
        conn,
    )
    imp.add_argument("file", metavar="FILE", help="a file holding a JSON object ('-': stdin)")
    imp.add_argument("path", metavar="PATH", nargs="?", help="store the entries below PATH")
    imp.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"keys per request (default: {DEFAULT_BATCH_SIZE})",
    )

    template = _group(
        commands,
        "template",
        "store and render Jinja2 templates",
        "  kvpio template set hello 'Hello {{ name }}!'\n  kvpio template get hello",
    )
    _add(
        template,
        "list",
        cmd_template_list,
        "list the stored templates' names",
        "  kvpio template list",
        conn,
    )
    tget = _add(
        template,
        "get",
        cmd_template_get,
        "render template NAME (or print its source)",
        '  kvpio template get hello --data \'{"name": "world"}\'\n'
        "  kvpio template get hello --raw\n\n"
        "Values for the template are retrieved from your bucket based on variable\n"
        "names found in the template; --data overrides them for this render.",
        conn,
    )
    tget.add_argument("name", metavar="NAME", help="the template's name")
    tget.add_argument("--data", metavar="JSON", help="a JSON object overriding bucket values")
    tget.add_argument("--raw", action="store_true", help="print the template un-rendered")
    tset = _add(
        template,
        "set",
        cmd_template_set,
        "store TEMPLATE under NAME",
        "  kvpio template set hello 'Hello {{ name }}!'",
        conn,
    )
    tset.add_argument("name", metavar="NAME")
    tset.add_argument("template", metavar="TEMPLATE", help="Jinja2 template text")
    tdel = _add(
        template,
        "del",
        cmd_template_del,
        "delete template NAME",
        "  kvpio template del hello",
        conn,
    )
    tdel.add_argument("name", metavar="NAME")

    _add_server_commands(commands)
    return parser


def _add_server_commands(commands: Any) -> None:
    """Register ``serve``, ``accounts`` and ``db`` (cheap: no server dependency loads here)."""
    add_commands(commands)


# ---------------------------------------------------------------- entry point


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"kvpio: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one ``kvpio`` command and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Handler = args.func
    try:
        return func(args)
    except CommandError as exc:
        return _fail(exc.message, exc.code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except UnicodeEncodeError as exc:
        encoding = getattr(sys.stdout, "encoding", None) or exc.encoding
        return _fail(
            f"the output does not fit this terminal's {encoding} encoding"
            " (set PYTHONIOENCODING=utf-8)",
            EXIT_FAILED,
        )
    except BrokenPipeError:
        # the reader went away (kvpio ... | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
