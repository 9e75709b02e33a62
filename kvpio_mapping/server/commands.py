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

_DB_HELP = (
    "database file (default: $KVPIO_DB, else "
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
    serve.add_argument(
        "--api-key",
        default=os.environ.get("KVPIO_APIKEY"),
        help="make sure an account with this API key exists (default: $KVPIO_APIKEY)",
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
        "--max-connections",
        type=int,
        default=None,
        help="open connections per worker (default: the open-file limit less a tenth)",
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
    listing = actions.add_parser("list", help="list accounts: id, email, reads, size")
    listing.add_argument("--db", help=_DB_HELP)
    listing.set_defaults(func=_list)
    delete = actions.add_parser("delete", help="delete an account with all its data")
    delete.add_argument("name", help="account name")
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


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    missing = [name for name in ("falcon", "uvicorn", "jinja2") if find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"kvpio serve: needs the server extra ({', '.join(missing)} missing):"
            " pip install 'kvpio-mapping[server]'\n"
        )
        return 1
    return serve(
        host=args.host,
        port=args.port,
        db=args.db,
        api_key=args.api_key,
        workers=args.workers,
        max_body=args.max_body,
        render_timeout=args.render_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
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
    from .storage import AccountExistsError

    storage = _open(args, "accounts create", create=True)
    if storage is None:
        return 1
    try:
        key = storage.create_account(args.id, args.email, args.api_key)
    except AccountExistsError as exc:
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
        for account in storage.list_accounts():
            print(f"{account.id}\t{account.email}\t{account.reads}\t{account.size}")
    finally:
        storage.close()
    return 0


def _delete(args: argparse.Namespace) -> int:
    storage = _open(args, "accounts delete")
    if storage is None:
        return 1
    try:
        existed = storage.delete_account(args.name)
    finally:
        storage.close()
    if not existed:
        sys.stderr.write(f"kvpio accounts delete: no account {args.name!r}\n")
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from .database import damage_report, resolve_db
    from .storage.sqlite import SQLiteStorage

    storage = _open(args, "db check")
    if storage is None:
        return 1
    location = resolve_db(args.db)
    try:
        if not isinstance(storage, SQLiteStorage):
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
