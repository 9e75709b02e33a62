"""The ``serve``, ``accounts`` and ``db`` subcommands, for the ``kvpio`` CLI and ``python -m``.

Importing this module is cheap: the server's dependencies load only when a
command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.util import find_spec
from typing import Any

from ..terminal import NotConfirmed, confirm, print_table
from .logs import FORMATS, LEVELS

_DB_HELP = (
    "database file or postgresql:// URL (default: $KVPIO_DB, else "
    "${XDG_DATA_HOME:-~/.local/share}/kvpio/kvpio.sqlite3); 'memory:' keeps nothing"
)


def add_commands(subparsers: Any) -> None:
    """Register ``serve``, ``accounts`` and ``db`` on an ``argparse`` subparsers object."""
    serve = subparsers.add_parser(
        "serve",
        help="run the kvp.io v1 server",
        description=(
            "Run the kvp.io v1 server."
            " Prints 'kvpio serving on URL (database PATH)' once it answers."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port, 0 picks a free one")
    serve.add_argument("--db", help=_DB_HELP)
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        default=os.environ.get("KVPIO_APIKEY"),
        help="make sure an account with this API key exists (default: $KVPIO_APIKEY)",
    )
    keys.add_argument(
        "--api-key-file",
        metavar="FILE",
        default=os.environ.get("KVPIO_APIKEY_FILE"),
        help="as --api-key, the key read from FILE's first line, so it is not seen in `ps`"
        " (default: $KVPIO_APIKEY_FILE)",
    )
    serve.add_argument(
        "--workers", type=int, default=None, help="worker processes (2; 1 with --db memory:)"
    )
    serve.add_argument(
        "--max-body", type=int, default=None, help="largest request body in bytes (16 MiB)"
    )
    serve.add_argument(
        "--render-timeout", type=float, default=None, help="template render wall time (2 s)"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds a client may take to send a request head, else 408 (10 s)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        help="seconds a client may take to send a request body, plus 1 s per 500 bytes"
        " received, else 408 (20 s)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections per worker (default: the open-file limit less a tenth)",
    )
    serve.add_argument(
        "--sync",
        choices=("normal", "full"),
        default="normal",
        help="SQLite durability: normal survives the server being killed, full also a power"
        " loss, at some write speed (%(default)s)",
    )
    serve.add_argument(
        "--log-level",
        choices=LEVELS,
        default="warning",
        help="least severe line logged (%(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=FORMATS,
        default="plain",
        help="log lines as plain text or one JSON object each (%(default)s)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request: method, path, status, duration, account",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    serve.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument(
        "--max-streams", type=int, default=None, help="open change feeds per worker (500)"
    )
    serve.add_argument(
        "--max-account-streams",
        type=int,
        default=None,
        help="open change feeds per account and worker (100)",
    )
    serve.set_defaults(func=_serve)

    accounts = subparsers.add_parser("accounts", help="manage the server's accounts")
    actions = accounts.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create an account and print its API key")
    create.add_argument("--id", required=True, help="account name")
    create.add_argument("--email", required=True, help="contact address")
    create.add_argument("--api-key", help="use this key instead of a random one")
    create.add_argument("--db", help=_DB_HELP)
    create.set_defaults(func=_create)
    listing = actions.add_parser(
        "list",
        help="list accounts: id, email, reads, size",
        description="List accounts: aligned under a header on a terminal, tab-separated in a pipe.",
    )
    listing.add_argument("--db", help=_DB_HELP)
    listing.set_defaults(func=_list)
    delete = actions.add_parser("delete", help="delete an account with all its data")
    delete.add_argument("name", help="account name")
    delete.add_argument(
        "--yes", action="store_true", help="do not ask (needed when not on a terminal)"
    )
    delete.add_argument("--db", help=_DB_HELP)
    delete.set_defaults(func=_delete)

    database = subparsers.add_parser("db", help="look after the server's database")
    db_actions = database.add_subparsers(dest="action", required=True)
    check = db_actions.add_parser(
        "check",
        help="check the whole database file for damage (exit 1 if damaged)",
        description="Run SQLite's full integrity check (start-up runs a quick, time-bound one).",
    )
    check.add_argument("--db", help=_DB_HELP)
    check.set_defaults(func=_check)
    backup = db_actions.add_parser(
        "backup",
        help="copy the database, consistent as of one moment, into the new file DEST",
        description=(
            "Copy the database into the new file DEST with SQLite's online backup, safe while"
            " the server runs and writes. Restore by stopping the server and serving the copy"
            " (--db DEST), or moving it over the database file."
        ),
    )
    backup.add_argument("dest", metavar="DEST", help="the backup file to create")
    backup.add_argument("--db", help=_DB_HELP)
    backup.set_defaults(func=_backup)
    copy = db_actions.add_parser(
        "copy",
        help="copy every account, value and template from SOURCE to DEST",
        description="Copy every account (with its API key), value and template from SOURCE"
        " to DEST, then read each back and print what DEST holds. Stop the servers of"
        " SOURCE first. DEST must not have any of SOURCE's accounts.",
    )
    copy.add_argument(
        "source", help="database to copy from (a file, sqlite:// or postgresql:// URL)"
    )
    copy.add_argument("dest", help="database to copy into (created if missing)")
    copy.set_defaults(func=_copy)


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    modules = ("falcon", "uvicorn", "jinja2", "prometheus_client")
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"kvpio serve: needs the server extra ({', '.join(missing)} missing):"
            " pip install 'kvpio-mapping[server]'\n"
        )
        return 1
    api_key = args.api_key
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as file:
                api_key = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            sys.stderr.write(f"kvpio serve: cannot read the API key file: {exc}\n")
            return 2
        if not api_key:
            sys.stderr.write(f"kvpio serve: the first line of {args.api_key_file} is empty\n")
            return 2
    return serve(
        host=args.host,
        port=args.port,
        db=args.db,
        api_key=api_key,
        workers=args.workers,
        max_body=args.max_body,
        render_timeout=args.render_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        sync=args.sync,
        log_level=args.log_level,
        log_format=args.log_format,
        access_log=args.access_log,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_streams=args.max_streams,
        max_account_streams=args.max_account_streams,
    )


def _open(args: argparse.Namespace, command: str, *, create: bool = False) -> Any:
    """The database of ``--db``, or ``None`` after saying on stderr why it cannot be used."""
    from .database import DatabaseProblem, open_db, resolve_db

    try:
        return open_db(resolve_db(args.db), create=create)
    except DatabaseProblem as exc:
        sys.stderr.write(f"kvpio {command}: {exc}\n")
        return None


def _create(args: argparse.Namespace) -> int:
    from .storage import AccountExistsError, InvalidAccountError

    storage = _open(args, "accounts create", create=True)
    if storage is None:
        return 1
    try:
        key = storage.create_account(args.id, args.email, args.api_key)
    except (AccountExistsError, InvalidAccountError) as exc:
        sys.stderr.write(f"kvpio accounts create: {exc}\n")
        return 1
    finally:
        storage.close()
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    storage = _open(args, "accounts list")
    if storage is None:
        return 1
    try:
        accounts = storage.list_accounts()
    finally:
        storage.close()
    rows = [(account.id, account.email, account.reads, account.size) for account in accounts]
    print_table(("ID", "EMAIL", "READS", "SIZE"), rows)
    return 0


def _delete(args: argparse.Namespace) -> int:
    storage = _open(args, "accounts delete")
    if storage is None:
        return 1
    try:
        if storage.account(args.name) is None:
            sys.stderr.write(f"kvpio accounts delete: no account {args.name!r}\n")
            return 1
        try:
            confirm(f"Delete the account {args.name!r} and all its data?", args.yes)
        except NotConfirmed as exc:
            sys.stderr.write(f"kvpio accounts delete: {exc}\n")
            return 2
        if not storage.delete_account(args.name):
            sys.stderr.write(f"kvpio accounts delete: no account {args.name!r}\n")
            return 1
    finally:
        storage.close()
    return 0


def _check(args: argparse.Namespace) -> int:
    from .database import damage_report, resolve_db, shown
    from .storage.tree import TreeStorage

    storage = _open(args, "db check")
    if storage is None:
        return 1
    location = shown(resolve_db(args.db))
    try:
        if not isinstance(storage, TreeStorage):
            sys.stderr.write(f"kvpio db check: {location} keeps nothing to check\n")
            return 1
        problems = storage.check(full=True)
    finally:
        storage.close()
    if problems:
        print("\n".join(problems))
        sys.stderr.write(f"kvpio db check: {damage_report(location, problems)}\n")
        return 1
    print(f"{location}: ok")
    return 0


def _backup(args: argparse.Namespace) -> int:
    import sqlite3

    from .database import resolve_db, shown
    from .storage.tree import TreeStorage

    location = shown(resolve_db(args.db))
    storage = _open(args, "db backup")
    if storage is None:
        return 1
    dest = os.path.abspath(os.path.expanduser(args.dest))
    try:
        if not isinstance(storage, TreeStorage):
            sys.stderr.write(f"kvpio db backup: {location} keeps nothing to back up\n")
            return 1
        storage.backup(dest)
    except FileExistsError:
        sys.stderr.write(f"kvpio db backup: {dest} exists; a backup never overwrites a file\n")
        return 1
    except (OSError, sqlite3.Error) as exc:
        sys.stderr.write(f"kvpio db backup: cannot back up {location} to {dest}: {exc}\n")
        return 1
    finally:
        storage.close()
    print(f"{location} backed up to {dest} ({os.path.getsize(dest)} bytes)")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from ..cli import Progress
    from .database import DatabaseProblem, open_db, resolve_db, shown
    from .storage import AccountExistsError
    from .storage.copy import CopyMismatchError, copy_storage

    source_at, dest_at = resolve_db(args.source), resolve_db(args.dest)
    if source_at == dest_at:
        sys.stderr.write("kvpio db copy: SOURCE and DEST are the same database\n")
        return 2
    try:
        source = open_db(source_at, create=False)
    except DatabaseProblem as exc:
        sys.stderr.write(f"kvpio db copy: {exc}\n")
        return 1
    try:
        dest = open_db(dest_at, create=True)
    except DatabaseProblem as exc:
        source.close()
        sys.stderr.write(f"kvpio db copy: {exc}\n")
        return 1
    try:
        progress = Progress(len(source.account_records()), sys.stderr, "copying", "accounts")
        try:
            tally = copy_storage(source, dest, progress=progress.update)
        finally:
            progress.finish()
    except (AccountExistsError, CopyMismatchError) as exc:
        sys.stderr.write(f"kvpio db copy: {exc}\n")
        return 1
    finally:
        source.close()
        dest.close()
    print(
        f"verified in {shown(dest_at)}: {tally.accounts} accounts, {tally.keys} top-level keys,"
        f" {tally.templates} templates, {tally.bytes} bytes of values"
    )
    return 0
