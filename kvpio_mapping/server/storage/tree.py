"""The tree layout the SQL backends share: rows, their rules, planning writes, rendering reads.

Layout. Each account's bucket is a tree stored in the ``nodes`` table, one
row per stored node, keyed by ``(account, path)`` where ``path`` is the UTF-8
segments joined by NUL (segments never hold NUL), so the rows below a node
are one contiguous range: ``path > P||0x00 AND path < P||0x01``. A row is
either

- a *blob* (``kind`` 0): the compact JSON text of the whole subtree, used
  for every scalar and for every container whose JSON is at most
  :data:`BLOB_THRESHOLD` bytes; or
- a *split container* (``kind`` 1 object, 2 array): no body; its children
  are the rows whose ``parent`` is its path. Used for the upper levels of
  large values; or
- a *run* (``kind`` 3): several consecutive small children of one split
  container, as the JSON text that renders them, comma-joined (``"a":1,"b":2``
  for members, ``1,2`` for items), at most :data:`RUN_LIMIT` bytes (a
  quarter of a smaller threshold). A child is small when its label and JSON
  take at most half that; larger children get rows of
  their own (a blob, or a split container). A run's path is its
  container's, a NUL, a 0xFF byte (never in UTF-8, so never a segment) and
  a random token; its ``label`` is empty. Runs are never below the bucket
  itself, only below split containers.

Finding a child in a run: the ``members`` table maps the path each member
of an object kept in a run would have to the run's path (one indexed join);
an array item in a run lies in the row of its array with the greatest
``pos`` not above its index (one indexed query).

So touching one leaf reads the node's ancestors (one ``path IN (...)``
query, and one more when the leaf lies in a run), rewrites at most one
bounded blob or run, and adjusts the stored ``size`` of the ancestors: the
cost does not grow with the document. Reading a container concatenates its
rows' JSON text, never parsing it.

``pos`` orders siblings: insertion order for object keys (an overwrite keeps
its place, a new key goes last; gaps are allowed), the 0-based index for
array items, whose path segment is their 1-based position (a run's ``pos``
is its first item's index). ``label`` is the JSON text that precedes the
node's value in its parent (``"key":`` for a member, empty for an item), so
rendering never encodes keys. ``size`` is the UTF-8 length of the node's
compact JSON (of a run: of its body), kept up to date for split containers
so that account sizes and merge decisions need no scan. A split container
that shrinks to half the threshold is merged back into a blob.

``children`` is the number of members or items of a split container, and
the ``accounts`` row keeps the same for the bucket's top level, each changed
by the write that adds or removes a child: so a count (``len()``) of any
container costs a few indexed lookups, and a value in a blob or a run, being
small, is counted from its decoded text. On other rows ``children`` means nothing.

The threshold (8 KiB) weighs whole writes against leaf writes. Every row
costs a whole write (or a whole read) a few microseconds of SQL however small
it is: at 4 KiB the 10 MB document of the benchmark takes 14,700 rows and
29,000 ``members`` entries, at 8 KiB 3,900 and 4,500, and its whole write
half the time. A leaf
write decodes and re-encodes one blob or run, so larger blobs make it dearer:
at 8 KiB a leaf write in a 10 MB document still costs under twice one in a
1 KB document (at 4 KiB 1.4x, at 64 KiB over 2x);
``benchmarks/storage_bench.py`` measures both.

Thanks to runs, a long container of tiny children (say a list of 100,000
numbers) is one row per KiB or so: reading it whole costs less than a
``json.loads`` of its text, and a write inside it decodes and stores one
run. Runs are kept to 1 KiB because a leaf write decodes and re-encodes a
whole run, and a run of an object that outgrows its limit is planned again
into several rows, moving its later siblings' ``pos``: longer runs would
make whole reads a little cheaper but leaf writes in large documents dearer. Removing an item
that is not the last from a split array moves the later runs by one ``pos``
and renames the later items that have rows of their own (with their
subtrees).

A bulk import (a batch of more than :data:`~.base.LOGGED_ENTRIES` new
top-level keys with plain scalar values) spends its time on rows, not on
Python: one statement reads the members from the batch's JSON text in the database
with ``json_each`` (:attr:`TreeStorage.new_top_rows`), one row per key, and anything it
cannot store exactly is stored the usual way.

:class:`TreeStorage` holds every rule of the layout and the statements that
read and write it, written in SQLite's dialect with ``?`` placeholders (a
backend that reads SQL otherwise translates them: see :mod:`.postgres`).
Each backend supplies its connections and transactions (:meth:`TreeStorage._write`,
:meth:`TreeStorage._read`), its read cache and its checks.
"""

from __future__ import annotations

import json
import secrets
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from json.encoder import encode_basestring
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias

import orjson

from ... import paths, values
from ...errors import InvalidPathError
from ...paths import MISSING, Path
from .. import collector, jsontext
from .base import (
    CHANGE_LOG_REVISIONS,
    CHANGES_BATCH,
    LOGGED_ENTRIES,
    REFUSALS,
    Account,
    AccountExistsError,
    AccountRecord,
    Change,
    ChangeKind,
    Changes,
    Check,
    CheckFailedError,
    Committed,
    Failure,
    Operation,
    Storage,
    StorageError,
    StorageUnavailableError,
    TopLevelSets,
    UnknownAccountError,
    Write,
    appendable,
    check_account,
    check_operations,
    failure,
    hash_key,
    incremented,
    logged_commit,
    mergeable,
    new_key,
    same_digest,
    uncountable,
)

BLOB_THRESHOLD: Final = 8192
"""Largest compact JSON (bytes) kept as one blob row; larger containers are split."""

RUN_LIMIT: Final = 1024
"""Largest run (bytes of its body): a quarter of the threshold, up to 1 KiB."""

BLOB: Final = 0
OBJECT: Final = 1
ARRAY: Final = 2
RUN: Final = 3

_BULK_CHUNK: Final = 10_000
"""Top-level pairs of a batch planned and inserted at a time (bounds the rows held)."""
_LOOKUP_CHUNK: Final = 500
"""Paths per ``IN (...)`` lookup."""
_LOG_TRIM: Final = 64
"""Revisions between drops of the change log's rows past :data:`CHANGE_LOG_REVISIONS`."""
_CONTAINERS: Final = (dict, list)

# values.encode's text; values reach the storage already checked, so subtrees
# are encoded without checking them again at every level.
_encode = jsontext.dump

_SELECT_NODE: Final = (
    "SELECT path, kind, label, body, pos, size, children FROM nodes WHERE account = ? AND path IN "
)
_ROWS: Final = (
    "SELECT path, parent, pos, kind, label, body, size, children FROM nodes WHERE account = ?"
)
_RENDER_ROWS: Final = (
    "SELECT parent, CASE WHEN body IS NULL THEN path END, kind, label || coalesce(body, '')"
    " FROM nodes WHERE account = ?"
)
"""A row's parent, its path if it is a split container, its kind and its text (label and body,
joined by the database: a whole read makes two objects a row, not five)."""
_RANGE: Final = " AND path > ? AND path < ?"
# Upserts rather than INSERT OR REPLACE: a row updated in place keeps its index entry.
_INSERT: Final = (
    "INSERT INTO nodes (account, path, parent, pos, kind, label, body, size, children)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account, path) DO UPDATE SET"
    " parent = excluded.parent, pos = excluded.pos, kind = excluded.kind,"
    " label = excluded.label, body = excluded.body, size = excluded.size,"
    " children = excluded.children"
)
TABLE_COLUMNS: Final = {
    "nodes": ("account", "path", "parent", "pos", "kind", "label", "body", "size", "children"),
    "members": ("account", "path", "run"),
}
"""The columns of a new row of each table (see :meth:`TreeStorage._insert_new`)."""
_INSERT_NEW: Final = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    for table, columns in TABLE_COLUMNS.items()
}
_REPLACE_SCALAR: Final = (
    f"UPDATE nodes SET kind = {BLOB}, body = ?, size = ?, children = 0"
    " WHERE account = ? AND path = ?"
)
"""A stored top-level key's new scalar: its parent, position and label stay (and so does
its entry in the ``nodes_children`` index, which an upsert rewrites)."""
_REPLACE_BLOB: Final = _REPLACE_SCALAR + f" AND kind = {BLOB}"
""":data:`_REPLACE_SCALAR` of a key stored as a blob (nothing below it to delete)."""
_INSERT_MEMBER: Final = (
    "INSERT INTO members (account, path, run) VALUES (?, ?, ?)"
    " ON CONFLICT (account, path) DO UPDATE SET run = excluded.run"
)
_PLAIN_SCALARS: Final = frozenset((str, int, bool, type(None)))
"""The value types whose text a backend's :attr:`TreeStorage.new_top_rows` writes as
:func:`_scalar` would (see there)."""
_BOM: Final = b"\xef\xbb\xbf"
_LAST_CHILD: Final = (
    "SELECT path, kind, label, body, pos, size, children FROM nodes"
    " WHERE account = ? AND parent = ? ORDER BY pos DESC LIMIT 1"
)
_ITEM_ROW: Final = (
    "SELECT path, kind, label, body, pos, size, children FROM nodes"
    " WHERE account = ? AND parent = ? AND pos <= ? ORDER BY pos DESC LIMIT 1"
)
_MEMBER_RUN: Final = (
    "SELECT n.path, n.kind, n.label, n.body, n.pos, n.size, n.children FROM members AS m"
    " JOIN nodes AS n ON n.account = m.account AND n.path = m.run"
    " WHERE m.account = ? AND m.path = ?"
)


class _Node(NamedTuple):
    """One stored row, as the ancestor lookup returns it."""

    path: bytes
    kind: int
    label: str
    body: str | None
    pos: int
    size: int
    children: int


_NewRow = tuple[bytes, bytes, int, int, str, str | None, int, int]
"""(path, parent, pos, kind, label, body, size, children) of a row to insert."""

_Member = tuple[bytes, bytes]
"""(member path, run path) of a ``members`` row to insert."""

_Child = tuple[str | None, Any]
"""A child of a container: (key, value) of a member, (None, value) of an item."""


class _Run(NamedTuple):
    """A run found holding a child: the row, its children decoded, the child's index among them."""

    node: _Node
    children: list[_Child]
    at: int


def _scalar(value: Any) -> str:
    """The compact JSON text of a checked value, without the encoder's set-up for scalars.

    Scalars are most of what large batches store; the texts are the ones
    :func:`json.dumps` gives (finite floats only reach the storage).
    """
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return float.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return _encode(value)


def _key(segments: Sequence[str]) -> bytes:
    return "\x00".join(segments).encode()


def _child(parent: bytes, segment: str) -> bytes:
    return parent + b"\x00" + segment.encode() if parent else segment.encode()


def _parent_of(path: bytes) -> bytes:
    cut = path.rfind(b"\x00")
    return path[:cut] if cut >= 0 else b""


def _label(key: str) -> str:
    """What precedes an object member's value in compact JSON: ``"key":``."""
    return encode_basestring(key) + ":"


def _size(text: str) -> int:
    """The UTF-8 length of ``text`` (its length, when it is ASCII, without encoding it)."""
    return len(text) if text.isascii() else len(text.encode())


def _addressable(value: dict[str, Any]) -> bool:
    """Whether every key can be a row path segment (non-empty, no NUL): else keep a blob."""
    return "" not in value and "\x00" not in "".join(value)


def _run_path(container: bytes) -> bytes:
    """A fresh path for a run below ``container`` (0xFF never occurs in a UTF-8 segment)."""
    return container + b"\x00\xff" + secrets.token_hex(8).encode()


def _loads(text: str) -> Any:
    """The value of stored JSON text (orjson's speed, :mod:`json`'s answer)."""
    return jsontext.load(text.encode())


def _run_children(kind: int, body: str) -> list[_Child]:
    """The children a run of a split container of ``kind`` holds, in order."""
    if kind == OBJECT:
        return list(_loads("{" + body + "}").items())
    return [(None, item) for item in _loads("[" + body + "]")]


def _decode(body: str) -> Any:
    """A blob's value, for the :mod:`paths` functions to walk.

    Any scalar behaves alike there (nothing lies below it, a write replaces
    it), so a scalar body, maybe a long string, is not parsed.
    """
    return _loads(body) if body[0] in "[{" else None


def _joined(groups: Mapping[bytes, list[Any]], at: bytes, kind: int) -> str:
    """The JSON text of the split container at ``at``, its rows grouped by parent.

    A function of the module rather than a closure: a recursive closure is a
    reference cycle, which would keep every row of a whole read alive until
    the garbage collector next ran.
    """
    text = ",".join(
        [
            piece if child is None else piece + _joined(groups, child, child_kind)
            for _parent, child, child_kind, piece in groups.get(at, ())
        ]
    )
    return "{" + text + "}" if kind == OBJECT else "[" + text + "]"


def _nest(segments: Sequence[str], value: Any) -> Any:
    """``value`` wrapped in one object per segment (the parents a write creates)."""
    for segment in reversed(segments):
        value = {segment: value}
    return value


# SQLite's primary result codes and their messages (Python 3.10 gives only the message).


Connection: TypeAlias = Any
"""A backend's connection inside a transaction: ``execute`` and ``executemany`` of the
statements here (a :class:`Connection`, or an adapter with the same two calls)."""


def count_children(conn: Connection) -> None:
    """Fill in the ``children`` of every split container and account (schema version 2).

    One pass over the rows below split containers: each row counts one
    child, a run as many as it holds.
    """
    kinds = {
        (account, bytes(path)): kind
        for account, path, kind in conn.execute(
            "SELECT account, path, kind FROM nodes WHERE kind IN (?, ?)", (OBJECT, ARRAY)
        ).fetchall()
    }
    counts = dict.fromkeys(kinds, 0)
    for account, parent, kind, body in conn.execute(
        "SELECT account, parent, kind, body FROM nodes WHERE parent != x''"
    ).fetchall():
        key = (account, bytes(parent))
        counts[key] += len(_run_children(kinds[key], body)) if kind == RUN else 1
    conn.executemany(
        "UPDATE nodes SET children = ? WHERE account = ? AND path = ?",
        [(count, account, path) for (account, path), count in counts.items()],
    )
    conn.execute(
        "UPDATE accounts SET children ="
        " (SELECT count(*) FROM nodes WHERE nodes.account = accounts.id AND nodes.parent = x'')"
    )


def _runs_of_top_sets(writes: Sequence[Write]) -> Iterator[Sequence[Write]]:
    """``writes`` in runs: the longest of consecutive writes of one account and key that each
    set one valid top-level key without checks, and each other write alone."""
    run: list[Write] = []
    for write in writes:
        operations = write.operations
        plain = (
            not write.checks
            and type(operations) is not TopLevelSets
            and len(operations) == 1
            and operations[0].kind == "set"
            and len(operations[0].path) == 1
            and paths.one_segment_each(operations[0].path)
        )
        if run and not (
            plain and write.account == run[0].account and write.key_digest == run[0].key_digest
        ):
            yield run
            run = []
        if plain:
            run.append(write)
        else:
            yield [write]
    if run:
        yield run


class TreeStorage(Storage):
    """Accounts, values and templates in the tree layout; the backend supplies transactions.

    ``blob_threshold`` is the largest compact JSON, in bytes, stored as one
    row; it exists for tuning and tests, the default suits documents from a
    few bytes to tens of megabytes.
    """

    new_top_rows: ClassVar[str | None] = None
    """The backend's statement storing the members of a JSON object as new top-level blob rows,
    reading them from its text in the database (``json_each``); None: it has none.

    Parameters: the account, the first ``pos`` (a member's is that plus its place in the
    text: ``pos`` may have gaps), the text. It need be right only for the texts
    :meth:`_store_new_top` keeps: no escapes, scalars that are strings, integers of at
    most 18 digits, ``true``, ``false`` or ``null``; it may be given others (their
    members not yet decoded), whose rows are rolled back, and text that is not JSON. A
    key stored already, or twice in the text, must fail it with one of
    :attr:`duplicate_errors`."""
    duplicate_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """What :attr:`new_top_rows` raises for a key stored already or twice, or a value it cannot
    store: the batch is then stored as usual."""

    def __init__(self, *, blob_threshold: int = BLOB_THRESHOLD) -> None:
        self._threshold = blob_threshold
        self._merge_below = blob_threshold // 2
        self._run_limit = min(blob_threshold // 4, RUN_LIMIT)
        self._run_item = self._run_limit // 2

    # transactions: the backend's

    @abstractmethod
    def _write(self) -> AbstractContextManager[Connection]:
        """One write transaction, committed when the block ends, rolled back if it raises."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Connection]:
        """One read transaction, so the statements of a read see one snapshot."""

    @abstractmethod
    def check(self, *, full: bool = True, seconds: float | None = None) -> list[str]:
        """Problems the database shows, one line each (``[]`` if sound).

        ``seconds`` bounds the time taken: past it the check stops with
        ``TimeoutError``; ``full`` asks for the slower, thorough check.
        """

    @abstractmethod
    def backup(self, destination: str) -> None:
        """Copy the whole database, as of one moment, into the new file ``destination``."""

    @contextmanager
    def _write_to(self, account: str) -> Iterator[tuple[Connection, int]]:
        """A write transaction on an existing account, and the revision it makes.

        :class:`UnknownAccountError` if there is no such account, checked inside the
        transaction, so a write racing the account's deletion (say, from
        another process) cannot leave values behind.
        """
        with self._write() as conn:
            yield conn, self._next_revision(conn, account)

    @staticmethod
    def _next_revision(
        conn: Connection, account: str, key_digest: str | None = None, count: int = 1
    ) -> int:
        """Raise the account's revision by ``count`` inside a write transaction; the last
        revision it makes.

        With ``key_digest``, only while the account still has that key.
        """
        if key_digest is None:
            row = conn.execute(
                "UPDATE accounts SET revision = revision + ? WHERE id = ? RETURNING revision",
                (count, account),
            ).fetchone()
        else:
            row = conn.execute(
                "UPDATE accounts SET revision = revision + ? WHERE id = ? AND key_digest = ?"
                " RETURNING revision",
                (count, account, key_digest),
            ).fetchone()
        if row is None:
            raise UnknownAccountError(account)
        return int(row[0])

    @classmethod
    def _log(
        cls,
        conn: Connection,
        account: str,
        revision: int,
        entries: Sequence[tuple[ChangeKind, Path, str | None]],
    ) -> None:
        """Log a revision's changes (see :meth:`_log_revisions`)."""
        cls._log_revisions(conn, account, [(revision, entries)])

    @staticmethod
    def _log_revisions(
        conn: Connection,
        account: str,
        logged: Sequence[tuple[int, Sequence[tuple[ChangeKind, Path, str | None]]]],
    ) -> None:
        """Log revisions' changes; every :data:`_LOG_TRIM` revisions, drop those the log
        stopped keeping (:meth:`changes` never reads them, so they may wait)."""
        conn.executemany(
            "INSERT INTO changes (account, revision, seq, kind, path, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (account, revision, seq, kind, _key(path), text)
                for revision, entries in logged
                for seq, (kind, path, text) in enumerate(entries)
            ],
        )
        for revision, _ in logged:
            if revision % _LOG_TRIM == 0:
                conn.execute(
                    "DELETE FROM changes WHERE account = ? AND revision <= ?",
                    (account, revision - CHANGE_LOG_REVISIONS),
                )

    # accounts

    def create_account(self, id: str, email: str, api_key: str | None = None) -> str:
        check_account(id, email)
        key = api_key if api_key is not None else new_key()
        digest = hash_key(key)
        with self._write() as conn:
            taken = conn.execute(
                "SELECT 1 FROM accounts WHERE id = ? OR key_digest = ?", (id, digest)
            ).fetchone()
            if taken is not None:
                raise AccountExistsError(f"account {id!r} or its API key exists already")
            conn.execute(
                "INSERT INTO accounts (id, email, key_digest) VALUES (?, ?, ?)", (id, email, digest)
            )
        return key

    def ensure_account(self, api_key: str, id: str = "default", email: str = "") -> str:
        check_account(id, email)
        digest = hash_key(api_key)
        with self._write() as conn:
            found = self._find(conn, digest)
            if found is not None:
                return found
            if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (id,)).fetchone():
                raise AccountExistsError(f"account {id!r} exists with another API key")
            conn.execute(
                "INSERT INTO accounts (id, email, key_digest) VALUES (?, ?, ?)", (id, email, digest)
            )
            return id

    @staticmethod
    def _find(conn: Connection, digest: str) -> str | None:
        row = conn.execute(
            "SELECT id, key_digest FROM accounts WHERE key_digest = ?", (digest,)
        ).fetchone()
        if row is not None and same_digest(row[1], digest):
            return str(row[0])
        return None

    def authenticate(self, api_key: str) -> str | None:
        with self._read() as conn:
            return self._find(conn, hash_key(api_key))

    def _public(self, conn: Connection, id: str, email: str, reads: int) -> Account:
        return Account(id, email, reads, self._bucket_size(conn, id))

    @staticmethod
    def _bucket_size(conn: Connection, account: str) -> int:
        """Bytes of the bucket as one compact JSON object, from the top-level rows' sizes."""
        count, entries = conn.execute(
            "SELECT count(*), sum(length(CAST(label AS BLOB)) + size) FROM nodes"
            " WHERE account = ? AND parent = x''",
            (account,),
        ).fetchone()
        return 2 + int(entries or 0) + max(int(count) - 1, 0)

    def account(self, id: str) -> Account | None:
        with self._read() as conn:
            row = conn.execute("SELECT email, reads FROM accounts WHERE id = ?", (id,)).fetchone()
            return None if row is None else self._public(conn, id, row[0], row[1])

    def list_accounts(self) -> list[Account]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, email, reads FROM accounts ORDER BY id").fetchall()
            return [self._public(conn, id, email, reads) for id, email, reads in rows]

    def delete_account(self, id: str) -> bool:
        with self._write() as conn:
            gone: int = conn.execute("DELETE FROM accounts WHERE id = ?", (id,)).rowcount
            conn.execute("DELETE FROM nodes WHERE account = ?", (id,))
            conn.execute("DELETE FROM members WHERE account = ?", (id,))
            conn.execute("DELETE FROM templates WHERE account = ?", (id,))
            conn.execute("DELETE FROM changes WHERE account = ?", (id,))
            return gone > 0

    def account_records(self) -> list[AccountRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, email, key_digest, reads, revision FROM accounts ORDER BY id"
            ).fetchall()
        return [AccountRecord(*row) for row in rows]

    def restore_account(
        self, record: AccountRecord, bucket: Mapping[str, Any], templates: Sequence[tuple[str, str]]
    ) -> None:
        with self._write() as conn:
            taken = conn.execute(
                "SELECT 1 FROM accounts WHERE id = ? OR key_digest = ?",
                (record.id, record.key_digest),
            ).fetchone()
            if taken is not None:
                raise AccountExistsError(f"account {record.id!r} or its API key exists already")
            conn.execute(
                "INSERT INTO accounts (id, email, key_digest, reads, revision, log_start)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.email,
                    record.key_digest,
                    record.reads,
                    record.revision,
                    record.revision,
                ),
            )
            for key, value in bucket.items():
                self._set(conn, record.id, (key,), value, False)
            conn.executemany(
                "INSERT INTO templates (account, name, pos, source) VALUES (?, ?, ?, ?)",
                [(record.id, name, pos, source) for pos, (name, source) in enumerate(templates)],
            )

    def add_reads(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE accounts SET reads = reads + ? WHERE id = ?",
                [(count, id) for id, count in counts.items()],
            )

    # the tree: lookup, rendering, planning rows

    @staticmethod
    def _locate(conn: Connection, account: str, path: Path) -> tuple[list[_Node], list[str]]:
        """The stored rows from the top down to ``path`` or its deepest stored ancestor.

        Also returns the segments with positions below split arrays in their
        canonical form (``"03"`` names the row ``"3"``). Stops at a blob: what
        lies below it is inside its body.
        """
        segments = list(path)
        chain: list[_Node] = []
        start = 0
        while True:
            wanted = [_key(segments[:depth]) for depth in range(start + 1, len(segments) + 1)]
            marks = ",".join("?" * len(wanted))
            found = {
                row[0]: _Node(*row)
                for row in conn.execute(f"{_SELECT_NODE}({marks})", [account, *wanted])
            }
            for depth in range(start + 1, len(segments) + 1):
                node = found.get(wanted[depth - start - 1])
                if node is None:
                    return chain, segments
                chain.append(node)
                if node.kind == BLOB:
                    return chain, segments
                if node.kind == ARRAY and depth < len(segments):
                    segment = segments[depth]
                    if segment.isascii() and segment.isdigit() and segment != str(int(segment)):
                        segments[depth] = str(int(segment))
                        start = depth
                        break
            else:
                return chain, segments

    @staticmethod
    def _subtree(
        conn: Connection,
        account: str,
        path: bytes,
        columns: str = _ROWS,
        tail: str = "",
        arguments: tuple[Any, ...] = (),
    ) -> list[Any]:
        """Rows strictly below ``path`` (the whole bucket for the root ``b""``).

        ``tail`` is SQL to append (an ``ORDER BY``, or a further condition
        whose values are ``arguments``).
        """
        if not path:
            rows: list[Any] = conn.execute(columns + tail, (account, *arguments)).fetchall()
            return rows
        rows = conn.execute(
            columns + _RANGE + tail, (account, path + b"\x00", path + b"\x01", *arguments)
        ).fetchall()
        return rows

    def _text(self, conn: Connection, account: str, node: _Node) -> str:
        """The JSON text of a stored node.

        A split container's text is concatenated from its rows' labels and
        bodies, which are JSON already: nothing is parsed or encoded.
        """
        if node.body is not None:
            return node.body
        rows = self._subtree(conn, account, node.path, _RENDER_ROWS, " ORDER BY parent, pos")
        return self._render(rows, node.path, node.kind)

    @staticmethod
    def _render(rows: list[Any], path: bytes, kind: int) -> str:
        """The JSON text of the split container at ``path`` from its subtree's rows.

        ``rows`` are :data:`_RENDER_ROWS`' (parent, path, kind, text), ordered by parent, pos.
        The rows are grouped as they are, not copied: a whole read holds one copy.
        """
        groups: dict[bytes, list[Any]] = {}
        current: bytes | None = None
        members: list[Any] = []
        for row in rows:
            if row[0] != current:
                current = row[0]
                members = groups[current] = []
            members.append(row)
        return _joined(groups, path, kind)

    def _plan(
        self,
        rows: list[_NewRow],
        members: list[_Member],
        path: bytes,
        pos: int,
        label: str,
        value: Any,
        depth: int,
        fast: bool | None = None,
    ) -> int:
        """Append the rows that store ``value`` at ``path`` to ``rows``; return its size.

        Small values become one blob; a container too large for one is split,
        its children planned in turn (see :meth:`_plan_children`). Containers
        at the deepest addressable level stay blobs (nothing below them can be
        written by path), and so do objects with a key that cannot be a path
        segment. ``fast`` tells whether bare ``orjson.dumps`` encodes every
        part of ``value`` (None: not known yet, found out with one encoding of
        the whole).
        """
        parent = _parent_of(path)
        kind = type(value)
        if (kind is dict or kind is list) and depth < paths.MAX_DEPTH:
            whole = None
            if fast is None:
                whole = jsontext.dump_checked(value)
                fast = whole is not None
                if whole is not None:
                    text = whole.decode() if len(whole) <= self._threshold else None
                else:
                    text = self._within(value, self._threshold, False)
            else:
                text = self._within(value, self._threshold, fast)
            if text is None:
                with collector.held_off():  # a large value: many rows, no cycles
                    return self._split(
                        rows, members, path, parent, pos, label, value, depth, fast, whole
                    )
        else:
            text = _scalar(value)
        size = _size(text)
        rows.append((path, parent, pos, BLOB, label, text, size, 0))
        return size

    def _split(
        self,
        rows: list[_NewRow],
        members: list[_Member],
        path: bytes,
        parent: bytes,
        pos: int,
        label: str,
        value: Any,
        depth: int,
        fast: bool,
        known: bytes | None = None,
    ) -> int:
        """:meth:`_plan` of a container known to be too large for one blob; its size.

        ``known``: the container's text, when ``fast`` and it was encoded (see
        :meth:`_plan_children`).
        """
        if type(value) is dict and not _addressable(value):
            text = _encode(value)
            size = _size(text)
            rows.append((path, parent, pos, BLOB, label, text, size, 0))
            return size
        slot = len(rows)
        rows.append((path, parent, pos, BLOB, label, None, 0, 0))
        if type(value) is dict:
            kind, children = OBJECT, list(value.items())
        else:
            kind, children = ARRAY, [(None, item) for item in value]
        joined, _count = self._plan_children(
            rows, members, path, kind, 0, children, depth + 1, fast=fast, known=known
        )
        size = 2 + joined
        rows[slot] = (path, parent, pos, kind, label, None, size, len(children))
        return size

    def _within(self, value: Any, limit: int, fast: bool) -> str | None:
        """The JSON text of a container if it takes at most ``limit`` bytes, else None.

        Each item takes at least two bytes: a long container need not be encoded to know.
        """
        if 2 * len(value) + 1 > limit:
            return None
        if fast:
            text = orjson.dumps(value)
            return text.decode() if len(text) <= limit else None
        return jsontext.dump_within(value, limit)

    def _plan_children(
        self,
        rows: list[_NewRow],
        members: list[_Member],
        where: bytes,
        kind: int,
        first: int,
        children: Sequence[_Child],
        depth: int,
        reuse: bytes | None = None,
        fast: bool | None = None,
        known: bytes | None = None,
    ) -> tuple[int, int]:
        """Append the rows storing ``children`` of the split container at ``where``.

        Small children are packed, in order, into runs of at most a threshold
        each; the others get rows of their own. ``first`` is the ``pos`` of
        the first row (for an array, the index of the first child); ``reuse``
        is a path for the first run, if any; ``fast`` is :meth:`_plan`'s.
        ``known`` is the container's whole text, if it was encoded: the last
        child's text is then cut from it rather than encoded again (a big
        value's bulk is often its last member: ``{"meta": ..., "data": ...}``).
        Returns the bytes of the children's JSON text joined by commas, and
        the number of rows made.
        """
        joined = count = 0
        pos = index = first
        pieces: list[str] = []
        keys: list[bytes] = []
        run_size = run_pos = 0
        run_limit = self._run_limit
        is_object = kind == OBJECT

        def flush() -> None:
            nonlocal joined, count, reuse, pieces, keys
            if not pieces:
                return
            run = reuse if reuse is not None else _run_path(where)
            reuse = None
            rows.append((run, where, run_pos, RUN, "", ",".join(pieces), run_size, 0))
            members.extend((key, run) for key in keys)
            joined += run_size + (1 if count else 0)
            count += 1
            pieces, keys = [], []

        last = len(children) - 1
        for at, (key, value) in enumerate(children):
            if key is not None:
                label, path = _label(key), where + b"\x00" + key.encode()
            else:
                label, path = "", where + b"\x00" + str(index + 1).encode()
            cut = None
            if at == last and known is not None and type(value) in _CONTAINERS:
                # Past the opening bracket, the pieces before and their commas, the label.
                start = 1 + joined + (1 if count else 0) + (run_size + 1 if pieces else 0)
                cut = known[start + _size(label) : -1]
            text, piece = self._plan_child(
                rows, members, path, where, pos, label, value, depth, fast, cut
            )
            if text is not None:
                if pieces and run_size + 1 + piece > run_limit:
                    flush()
                if pieces:
                    run_size += 1 + piece
                else:
                    run_pos, run_size = pos, piece
                    if is_object:
                        pos += 1
                pieces.append(label + text)
                if key is not None:
                    keys.append(path)
            else:
                flush()
                joined += piece + (1 if count else 0)
                count += 1
                if is_object:
                    pos += 1
            if not is_object:
                index += 1
                pos = index
        flush()
        return joined, count

    def _plan_child(
        self,
        rows: list[_NewRow],
        members: list[_Member],
        path: bytes,
        where: bytes,
        pos: int,
        label: str,
        value: Any,
        depth: int,
        fast: bool | None,
        known: bytes | None = None,
    ) -> tuple[str | None, int]:
        """Plan one child of the split container at ``where``: (its text, its piece's size).

        The text when it is small enough for a run (nothing appended); else
        None, its rows appended to ``rows``. Scalars, and containers when
        ``fast``, are encoded once, without planning them as a value of their
        own (a container's text is ``known`` when its parent's was).
        """
        container = type(value) in _CONTAINERS
        if container and (not fast or depth >= paths.MAX_DEPTH):
            mark = len(rows)
            piece = _size(label) + self._plan(rows, members, path, pos, label, value, depth, fast)
            if len(rows) == mark + 1 and rows[mark][3] == BLOB and piece <= self._run_item:
                return str(rows.pop()[5]), piece
            return None, piece
        if container:
            threshold = self._threshold
            if known is None and 2 * len(value) + 1 <= threshold:
                known = orjson.dumps(value)
            if known is None or len(known) > threshold:
                size = self._split(
                    rows, members, path, where, pos, label, value, depth, True, known
                )
                return None, _size(label) + size
            text, size = known.decode(), len(known)
        else:
            text = _scalar(value)
            size = _size(text)
        piece = _size(label) + size
        if piece <= self._run_item:
            return text, piece
        rows.append((path, where, pos, BLOB, label, text, size, 0))
        return None, piece

    def _insert(
        self,
        conn: Connection,
        account: str,
        rows: list[_NewRow],
        members: list[_Member],
        *,
        new: bool = False,
    ) -> None:
        """Store ``rows`` and ``members``, each replacing any stored at its path.

        ``new``: none is stored yet, so the backend may load them in bulk (:meth:`_insert_new`).
        """
        if rows:
            node_rows = [(account, *row) for row in rows]
            if new:
                self._insert_new(conn, "nodes", node_rows)
            else:
                conn.executemany(_INSERT, node_rows)
        if members:
            member_rows = [(account, *member) for member in members]
            if new:
                self._insert_new(conn, "members", member_rows)
            else:
                conn.executemany(_INSERT_MEMBER, member_rows)

    def _insert_new(self, conn: Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (of :data:`TABLE_COLUMNS`) into ``table``; none of their keys is
        stored yet.

        A plain ``INSERT``, so a row that does exist fails the write rather than
        replacing it; a backend may load many rows faster (PostgreSQL's ``COPY``).
        """
        conn.executemany(_INSERT_NEW[table], rows)

    def _store(
        self,
        conn: Connection,
        account: str,
        path: bytes,
        pos: int,
        label: str,
        value: Any,
        depth: int,
        replaces: _Node | None,
    ) -> int:
        """Store ``value`` at ``path`` (replacing the node there, if any); return its size."""
        if replaces is not None and replaces.kind != BLOB:
            self._delete_below(conn, account, path)
        rows: list[_NewRow] = []
        members: list[_Member] = []
        size = self._plan(rows, members, path, pos, label, value, depth)
        if replaces is not None:  # its own row, planned first, replaces the stored one
            self._insert(conn, account, rows[:1], [])
            del rows[0]
        # Nothing is stored below it: it had no rows below, or they were deleted.
        self._insert(conn, account, rows, members, new=True)
        return size

    @staticmethod
    def _delete_below(conn: Connection, account: str, path: bytes) -> None:
        for table in ("nodes", "members"):
            conn.execute(
                f"DELETE FROM {table} WHERE account = ? AND path > ? AND path < ?",
                (account, path + b"\x00", path + b"\x01"),
            )

    @staticmethod
    def _counted(conn: Connection, account: str, container: _Node | None, delta: int) -> None:
        """Add ``delta`` to the children of the split container ``container`` (None: the bucket)."""
        if container is None:
            conn.execute(
                "UPDATE accounts SET children = children + ? WHERE id = ?", (delta, account)
            )
        else:
            conn.execute(
                "UPDATE nodes SET children = children + ? WHERE account = ? AND path = ?",
                (delta, account, container.path),
            )

    def _adjust(self, conn: Connection, account: str, ancestors: list[_Node], delta: int) -> None:
        """Add ``delta`` to the size of split ancestors; merge the highest that got small."""
        if not ancestors or delta == 0:
            return
        marks = ",".join("?" * len(ancestors))
        conn.execute(
            f"UPDATE nodes SET size = size + ? WHERE account = ? AND path IN ({marks})",
            [delta, account, *(node.path for node in ancestors)],
        )
        if delta > 0:
            return
        for node in ancestors:
            if node.size + delta <= self._merge_below:
                text = self._text(conn, account, node)
                self._delete_below(conn, account, node.path)
                conn.execute(
                    "UPDATE nodes SET kind = ?, body = ?, size = ? WHERE account = ? AND path = ?",
                    (BLOB, text, len(text.encode()), account, node.path),
                )
                return

    @staticmethod
    def _inside(path: Path, depth: int, value: Any) -> tuple[dict[str, Any], Any]:
        """A bucket-shaped wrapper holding a stored value, decoded, at ``path[:depth]``.

        Applying :mod:`paths` functions to the wrapper with the full path gives
        the same results and error messages as applying them to the bucket.
        """
        root: dict[str, Any] = {}
        holder = root
        for segment in path[: depth - 1]:
            holder[segment] = {}
            holder = holder[segment]
        holder[path[depth - 1]] = value
        return root, holder

    # runs

    @staticmethod
    def _find_run(conn: Connection, account: str, container: _Node, segment: str) -> _Run | None:
        """The run holding the child ``segment`` of a split container, if one does."""
        if container.kind == OBJECT:
            row = conn.execute(_MEMBER_RUN, (account, _child(container.path, segment))).fetchone()
            if row is None:
                return None
            run = _Node(*row)
            assert run.body is not None
            children = _run_children(OBJECT, run.body)
            keys = [key for key, _value in children]
            return _Run(run, children, keys.index(segment))
        if not (segment.isascii() and segment.isdigit()) or not 1 <= int(segment) < 2**62:
            return None
        index = int(segment) - 1
        row = conn.execute(_ITEM_ROW, (account, container.path, index)).fetchone()
        if row is None or row[1] != RUN:
            return None
        run = _Node(*row)
        assert run.body is not None
        children = _run_children(ARRAY, run.body)
        offset = index - run.pos
        return _Run(run, children, offset) if offset < len(children) else None

    def _rewrite_run(
        self,
        conn: Connection,
        account: str,
        chain: list[_Node],
        run: _Run,
        children: list[_Child],
        changed: int | None,
    ) -> None:
        """Store ``children`` in place of a run of the split container ``chain[-1]``.

        ``changed`` is the index in ``children`` of the one child whose value
        changed; None means the child ``run.at`` was removed (later items
        of an array move up). A run that still fits is updated in place; else
        its children are planned again, into runs and rows of their own.
        """
        container = chain[-1]
        node = run.node
        where = container.path
        if changed is None:
            self._counted(conn, account, container, -1)
            if container.kind == ARRAY:
                self._shift_items(conn, account, where, node.pos)
            else:
                gone = _child(where, str(run.children[run.at][0]))
                conn.execute("DELETE FROM members WHERE account = ? AND path = ?", (account, gone))
            if not children:
                conn.execute(
                    "DELETE FROM nodes WHERE account = ? AND path = ?", (account, node.path)
                )
                comma = 1 if container.size > 2 + node.size else 0
                self._adjust(conn, account, chain, -node.size - comma)
                return
        small = True
        if changed is not None:
            key, value = children[changed]
            label = "" if key is None else _label(key)
            small = len(label.encode()) + len(_encode(value).encode()) <= self._run_item
        if small:
            if container.kind == OBJECT:
                body = _encode(dict(children))[1:-1]
            else:
                body = _encode([value for _key, value in children])[1:-1]
            size = len(body.encode())
            if size <= self._run_limit:
                conn.execute(
                    "UPDATE nodes SET body = ?, size = ? WHERE account = ? AND path = ?",
                    (body, size, account, node.path),
                )
                self._adjust(conn, account, chain, size - node.size)
                return
        conn.execute("DELETE FROM nodes WHERE account = ? AND path = ?", (account, node.path))
        rows: list[_NewRow] = []
        members: list[_Member] = []
        joined, count = self._plan_children(
            rows, members, where, container.kind, node.pos, children, len(chain) + 1, node.path
        )
        if container.kind == OBJECT:
            kept = {member for member, at in members if at == node.path}
            conn.executemany(
                "DELETE FROM members WHERE account = ? AND path = ?",
                [
                    (account, member)
                    for member in (_child(where, str(key)) for key, _value in children)
                    if member not in kept
                ],
            )
            members = [(member, at) for member, at in members if at != node.path]
            if count > 1:
                conn.execute(
                    "UPDATE nodes SET pos = pos + ? WHERE account = ? AND parent = ? AND pos > ?",
                    (count - 1, account, where, node.pos),
                )
        self._insert(conn, account, rows, members)
        self._adjust(conn, account, chain, joined - node.size)

    def _add_child(
        self,
        conn: Connection,
        account: str,
        chain: list[_Node],
        last: _Node | None,
        pos: int,
        key: str | None,
        segment: str,
        value: Any,
    ) -> None:
        """Store a new last child of the split container ``chain[-1]``, whose last row is ``last``.

        A small child joins the last run if it fits, else starts a run.
        """
        container = chain[-1]
        where = container.path
        label = "" if key is None else _label(key)
        path = _child(where, segment)
        rows: list[_NewRow] = []
        members: list[_Member] = []
        size = self._plan(rows, members, path, pos, label, value, len(chain) + 1)
        piece = len(label.encode()) + size
        if len(rows) == 1 and rows[0][3] == BLOB and piece <= self._run_item:
            text = label + str(rows[0][5])
            if last is not None and last.kind == RUN and last.size + 1 + piece <= self._run_limit:
                conn.execute(
                    "UPDATE nodes SET body = body || ?, size = size + ?"
                    " WHERE account = ? AND path = ?",
                    ("," + text, 1 + piece, account, last.path),
                )
                run, rows = last.path, []
            else:
                run = _run_path(where)
                rows = [(run, where, pos, RUN, "", text, piece, 0)]
            members = [(path, run)] if key is not None else []
        self._insert(conn, account, rows, members)
        self._counted(conn, account, container, 1)
        self._adjust(conn, account, chain, piece + (1 if container.size > 2 else 0))

    @staticmethod
    def _length_after(last: _Node | None) -> int:
        """Items in a split array whose last row is ``last``."""
        if last is None:
            return 0
        if last.kind == RUN:
            assert last.body is not None
            return last.pos + len(_run_children(ARRAY, last.body))
        return last.pos + 1

    @staticmethod
    def _keys_of(found: Any) -> list[str]:
        if type(found) is dict:
            return list(found)
        if type(found) is list:
            return [str(position) for position in range(1, len(found) + 1)]
        return []

    # bucket values

    def revision(self, account: str) -> int:
        with self._read() as conn:
            return self._revision(conn, account)

    @staticmethod
    def _revision(conn: Connection, account: str) -> int:
        row = conn.execute("SELECT revision FROM accounts WHERE id = ?", (account,)).fetchone()
        return 0 if row is None else int(row[0])

    def _get(self, conn: Connection, account: str, path: Path) -> str | None:
        chain, segments = self._locate(conn, account, path)
        if not chain:
            return None
        node = chain[-1]
        if len(chain) == len(segments):
            return self._text(conn, account, node)
        if node.body is None:
            run = self._find_run(conn, account, node, segments[len(chain)])
            if run is None:
                return None
            found = paths.get_in(run.children[run.at][1], path[len(chain) + 1 :])
        else:
            found = paths.get_in(_decode(node.body), path[len(chain) :])
        return None if found is MISSING else values.dump(found)

    def get_all(self, account: str) -> str:
        with self._read() as conn:
            return self._get_all(conn, account)

    def _get_all(self, conn: Connection, account: str) -> str:
        rows = self._subtree(conn, account, b"", _RENDER_ROWS, " ORDER BY parent, pos")
        return self._render(rows, b"", OBJECT)

    def count(self, account: str, path: Path = ()) -> tuple[int | None, int]:
        with self._read() as conn:
            row = conn.execute(
                "SELECT revision, children FROM accounts WHERE id = ?", (account,)
            ).fetchone()
            revision, top = (0, 0) if row is None else (int(row[0]), int(row[1]))
            return (self._count(conn, account, path) if path else top), revision

    def _count(self, conn: Connection, account: str, path: Path) -> int | None:
        """The children of the value at ``path``, or None if nothing is there.

        A split container keeps its count; a value in a blob or a run is
        small, so it is decoded and counted.
        """
        chain, segments = self._locate(conn, account, path)
        if not chain:
            return None
        node, depth = chain[-1], len(chain)
        if node.kind != BLOB:
            if depth == len(segments):
                return node.children
            run = self._find_run(conn, account, node, segments[depth])
            if run is None:
                return None
            found = paths.get_in(run.children[run.at][1], path[depth + 1 :])
        else:
            assert node.body is not None
            if depth == len(segments) and node.body[0] not in "[{":
                # A scalar, maybe a long string: its kind is all the error needs.
                raise uncountable(path, "" if node.body[0] == '"' else json.loads(node.body))
            found = paths.get_in(_decode(node.body), path[depth:])
        if found is MISSING:
            return None
        if type(found) not in _CONTAINERS:
            raise uncountable(path, found)
        return len(found)

    def keys(self, account: str, path: Path = ()) -> list[str]:
        with self._read() as conn:
            if not path:
                return self._children(conn, account, b"")
            found, split = self._peek(conn, account, path)
            if split is None:
                return self._keys_of(found)
            if split.kind == ARRAY:
                return [
                    str(position) for position in range(1, self._length(conn, account, split) + 1)
                ]
            return self._children(conn, account, split.path)

    def _peek(self, conn: Connection, account: str, path: Path) -> tuple[Any, _Node | None]:
        """The value at ``path``, without rendering a split container.

        Returns the value decoded (or :data:`MISSING`) when it lies in a blob
        or a run, so it is small; for a split container, ``(None, its row)``.
        """
        chain, segments = self._locate(conn, account, path)
        if not chain:
            return MISSING, None
        node = chain[-1]
        if node.kind == BLOB:
            assert node.body is not None
            return paths.get_in(_loads(node.body), path[len(chain) :]), None
        if len(chain) < len(segments):
            run = self._find_run(conn, account, node, segments[len(chain)])
            if run is None:
                return MISSING, None
            return paths.get_in(run.children[run.at][1], path[len(chain) + 1 :]), None
        return None, node

    @staticmethod
    def _children(conn: Connection, account: str, path: bytes) -> list[str]:
        """The keys of a split object (or of the bucket, for ``b""``), in order."""
        rows = conn.execute(
            "SELECT path, kind, body FROM nodes WHERE account = ? AND parent = ? ORDER BY pos",
            (account, path),
        ).fetchall()
        cut = len(path) + 1 if path else 0
        keys: list[str] = []
        for child, kind, body in rows:
            if kind == RUN:
                keys.extend(str(key) for key, _value in _run_children(OBJECT, body))
            else:
                keys.append(child[cut:].decode())
        return keys

    def _length(self, conn: Connection, account: str, node: _Node) -> int:
        """Items in a split array (positions run 0..n-1 without gaps)."""
        row = conn.execute(_LAST_CHILD, (account, node.path)).fetchone()
        return self._length_after(None if row is None else _Node(*row))

    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        check_operations(operations)
        with self._write() as conn:
            return self._commit_in(conn, account, operations, checks, key_digest)

    def commit_group(self, writes: Sequence[Write]) -> list[Committed | Exception]:
        """The group in one transaction (one lock, one sync), each write in a savepoint.

        A refused write rolls back to its savepoint, taking its revision and its
        log rows with it, and leaves its neighbours alone. Should the group fail
        otherwise, each write is committed on its own instead, so a failure stays
        the write's own; only the database's being busy, full or unreachable
        fails the group as a whole.
        """
        if len(writes) < 2:
            return super().commit_group(writes)
        try:
            return self._commit_together(writes)
        except (StorageError, StorageUnavailableError):
            raise
        except Exception:
            return super().commit_group(writes)

    def _commit_together(self, writes: Sequence[Write]) -> list[Committed | Exception]:
        with self._write() as conn:
            return self._commit_each(conn, writes)

    def _commit_each(
        self, conn: Connection, writes: Sequence[Write]
    ) -> list[Committed | Exception]:
        """Commit each write inside one write transaction, a refused one rolled back alone."""
        outcomes: list[Committed | Exception] = []
        for run in _runs_of_top_sets(writes):
            if len(run) > 1:
                outcomes.extend(self._commit_top_sets(conn, run))
                continue
            account, operations, checks, key_digest = run[0]
            conn.execute("SAVEPOINT one_write")
            try:
                check_operations(operations)
                outcomes.append(self._commit_in(conn, account, operations, checks, key_digest))
            except REFUSALS as exc:
                conn.execute("ROLLBACK TO one_write")
                outcomes.append(exc)
            conn.execute("RELEASE one_write")
        return outcomes

    def _commit_top_sets(
        self, conn: Connection, writes: Sequence[Write]
    ) -> list[Committed | Exception]:
        """Commit writes of one account and key that each set one top-level key, as
        :meth:`_commit_in` would one after another, with a statement or two for them all.

        Nothing in such a write can be refused but the account: its revisions
        are taken at once, and the keys are stored as one batch (a key set
        twice keeps its first place and its last value, as it would).
        """
        account, key_digest = writes[0].account, writes[0].key_digest
        try:
            last = self._next_revision(conn, account, key_digest, len(writes))
        except UnknownAccountError as exc:
            return [exc] * len(writes)
        first = last - len(writes) + 1
        pairs: dict[str, Any] = {}
        logged = []
        for revision, write in enumerate(writes, first):
            operation = write.operations[0]
            pairs[operation.path[0]] = operation.value
            logged.append((revision, logged_commit(write.operations, [None])))
        self._set_top(conn, account, pairs)
        self._log_revisions(conn, account, logged)
        return [Committed(revision, [None]) for revision in range(first, last + 1)]

    def _commit_in(
        self,
        conn: Connection,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check],
        key_digest: str | None,
    ) -> Committed:
        """One commit inside a write transaction: revision, checks, operations, log."""
        revision = self._next_revision(conn, account, key_digest)
        failures: list[Failure] = []
        for index, check in enumerate(checks):
            failed = failure(index, check, self._get(conn, account, check.path))
            if failed is not None:
                failures.append(failed)
        if failures:
            raise CheckFailedError(failures)
        results = self._apply_all(conn, account, operations)
        self._log(conn, account, revision, logged_commit(operations, results))
        return Committed(revision, results)

    def changes(self, account: str, since: int, limit: int = CHANGES_BATCH) -> Changes:
        with self._read() as conn:
            row = conn.execute(
                "SELECT revision, log_start FROM accounts WHERE id = ?", (account,)
            ).fetchone()
            if row is None:
                raise UnknownAccountError(account)
            revision, start = int(row[0]), int(row[1])
            floor = max(start, revision - CHANGE_LOG_REVISIONS)
            if not floor <= since <= revision:
                return Changes(revision, [], False)
            rows = conn.execute(
                "SELECT revision, kind, path, body FROM changes WHERE account = ? AND revision > ?"
                " ORDER BY revision, seq LIMIT ?",
                (account, since, limit + 1),
            ).fetchall()
            if len(rows) > limit:
                # An answer holds whole revisions: up to the end of the limit-th row's.
                revision = rows[limit - 1][0]
                rows = conn.execute(
                    "SELECT revision, kind, path, body FROM changes WHERE account = ?"
                    " AND revision > ? AND revision <= ? ORDER BY revision, seq",
                    (account, since, revision),
                ).fetchall()
        logged = [
            Change(rev, kind, tuple(path.decode().split("\x00")) if path else (), body)
            for rev, kind, path, body in rows
        ]
        return Changes(revision, logged, True)

    def _apply(self, conn: Connection, account: str, operation: Operation) -> str | None:
        """Apply one operation inside a write transaction; its result as JSON text."""
        kind, path, value = operation
        if kind == "set":
            self._set(conn, account, path, value, False)
            return None
        if kind in ("delete", "pop"):
            return self._delete(conn, account, path, kind == "pop")
        found, split = self._peek(conn, account, path)
        if split is not None:
            # A split container: its type is all the checks below need.
            found = [] if split.kind == ARRAY else {}
        if kind == "increment":
            total = incremented(path, found, value)
            self._put(conn, account, path, total)
            return values.dump(total)
        if kind == "append":
            appendable(path, found)
            if found is MISSING:
                self._put(conn, account, path, [value])
                return "1"
            length = len(found) if split is None else self._length(conn, account, split)
            self._set(conn, account, (*path, str(length + 1)), value, False)
            return str(length + 1)
        mergeable(path, found)
        if found is MISSING:
            self._put(conn, account, path, value)
        else:
            for key, item in value.items():
                self._set(conn, account, (*path, key), item, False)
        return None

    def _put(self, conn: Connection, account: str, path: Path, value: Any) -> None:
        """Set ``path`` to ``value``; a top-level key as :meth:`_apply_all` sets one (one
        statement for a key stored as a blob, see :meth:`_set_top`)."""
        if len(path) == 1:
            self._set_top(conn, account, {path[0]: value})
        else:
            self._set(conn, account, path, value, False)

    def _apply_all(
        self, conn: Connection, account: str, operations: Sequence[Operation]
    ) -> list[str | None]:
        """Apply the operations in order; consecutive top-level sets are stored in bulk.

        A large batch is mostly top-level keys (``update()`` of a dict): storing
        them a chunk at a time (one lookup, one insert) keeps the transaction,
        which holds the write lock, short.
        """
        if type(operations) is TopLevelSets and self._store_new_top(conn, account, operations):
            return [None] * len(operations)
        results: list[str | None] = [None] * len(operations)
        top: dict[str, Any] = {}
        for index, operation in enumerate(operations):
            kind, path, value = operation
            if kind == "set" and len(path) == 1:
                top[path[0]] = value
                if len(top) >= _BULK_CHUNK:
                    self._set_top(conn, account, top)
                    top = {}
                continue
            if top:
                self._set_top(conn, account, top)
                top = {}
            results[index] = self._apply(conn, account, operation)
        if top:
            self._set_top(conn, account, top)
        return results

    def _store_new_top(self, conn: Connection, account: str, sets: TopLevelSets) -> bool:
        """Store a large batch of new top-level keys with one statement; False if it cannot.

        A bulk import spends its time on rows, not on Python: the database
        reads the members from the batch's text itself (:attr:`new_top_rows`),
        while members not decoded yet are decoded beside it
        (:meth:`~.base.TopLevelSets.decode_meanwhile`). That is exact only for
        plain texts (UTF-8 without escapes, integers of at most 18 digits, no
        floats, no containers), and only when every key is new and appears
        once: anything else is stored as usual, and a text that does not decode
        raises its error, having stored nothing.
        """
        text, statement = sets.text, self.new_top_rows
        if (
            statement is None
            or b"\\" in text
            or b"\x00" in text
            or text.startswith(_BOM)
            or jsontext.has_long_digits(text)
            or (sets.decoded and not self._plain_and_many(sets))
        ):
            return False
        try:
            decoded = text.decode()
        except UnicodeDecodeError:
            sets.members  # noqa: B018 - raises, unless the decoder read another encoding
            return False
        parameters = (account, self._next_top_pos(conn, account), decoded)
        conn.execute("SAVEPOINT new_top")  # a failed statement ends a PostgreSQL transaction
        sets.decode_meanwhile()
        try:
            conn.execute(statement, parameters)
        except Exception as exc:
            conn.execute("ROLLBACK TO new_top")
            conn.execute("RELEASE new_top")
            sets.members  # noqa: B018 - a text that does not decode raises its own error here
            if isinstance(exc, self.duplicate_errors):
                return False
            raise
        if not self._plain_and_many(sets):
            conn.execute("ROLLBACK TO new_top")
            conn.execute("RELEASE new_top")
            return False
        conn.execute("RELEASE new_top")
        self._counted(conn, account, None, len(sets))
        return True

    @staticmethod
    def _plain_and_many(sets: TopLevelSets) -> bool:
        """Whether ``sets`` suits :meth:`_store_new_top`: plain scalars, too many to log each."""
        return len(sets) > LOGGED_ENTRIES and sets.kinds <= _PLAIN_SCALARS

    @staticmethod
    def _next_top_pos(conn: Connection, account: str) -> int:
        """The ``pos`` of a new top-level key: after the bucket's last."""
        last = conn.execute(
            "SELECT max(pos) FROM nodes WHERE account = ? AND parent = x''", (account,)
        ).fetchone()[0]
        return 0 if last is None else int(last) + 1

    def _set_top(self, conn: Connection, account: str, pairs: dict[str, Any]) -> None:
        """Store top-level ``key: value`` pairs, as :meth:`_set` would one by one.

        Scalars, most of what large batches hold, go straight to their insert's parameters.
        One key stored as a blob and given a scalar, the commonest write, takes one statement.
        """
        if len(pairs) == 1:
            ((key, value),) = pairs.items()
            if type(value) not in _CONTAINERS:
                text = _scalar(value)
                replace = (text, _size(text), account, key.encode())
                if conn.execute(_REPLACE_BLOB, replace).rowcount:
                    return
        keys = [key.encode() for key in pairs]
        found: dict[bytes, tuple[int, int]] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            part = keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            query = f"SELECT path, kind, pos FROM nodes WHERE account = ? AND path IN ({marks})"
            for path, kind, pos in conn.execute(query, [account, *part]):
                found[path] = (kind, pos)
        pos = 0
        if len(found) < len(keys):  # a new key goes last
            pos = self._next_top_pos(conn, account)
        scalars: list[tuple[Any, ...]] = []
        replaced: list[tuple[Any, ...]] = []
        rows: list[_NewRow] = []  # new rows: below the keys, and of new keys
        kept: list[_NewRow] = []  # the new rows of stored keys, replacing theirs
        members: list[_Member] = []
        added = 0
        for path, (key, value) in zip(keys, pairs.items(), strict=True):
            old = found.get(path)
            if old is None:
                at = pos
                pos += 1
                added += 1
            else:
                at = old[1]
                if old[0] != BLOB:
                    self._delete_below(conn, account, path)
            if type(value) in _CONTAINERS:
                if old is None:
                    self._plan(rows, members, path, at, _label(key), value, 1)
                else:
                    planned: list[_NewRow] = []
                    self._plan(planned, members, path, at, _label(key), value, 1)
                    kept.append(planned[0])
                    rows += planned[1:]
                continue
            text = _scalar(value)
            if old is not None:
                replaced.append((text, _size(text), account, path))
            else:
                label = encode_basestring(key) + ":"
                scalars.append((account, path, b"", at, BLOB, label, text, _size(text), 0))
        if scalars:
            self._insert_new(conn, "nodes", scalars)
        if replaced:
            conn.executemany(_REPLACE_SCALAR, replaced)
        self._insert(conn, account, kept, [])
        self._insert(conn, account, rows, members, new=True)
        if added:
            self._counted(conn, account, None, added)

    def _set(
        self, conn: Connection, account: str, path: Path, value: Any, only_if_missing: bool
    ) -> bool:
        if not path:
            return not only_if_missing
        chain, segments = self._locate(conn, account, path)
        depth = len(chain)
        if depth == len(segments):
            # The node itself is stored: replace it, keeping its place.
            node = chain[-1]
            if only_if_missing:
                return False
            size = self._store(conn, account, node.path, node.pos, node.label, value, depth, node)
            self._adjust(conn, account, chain[:-1], size - node.size)
            return True
        if chain and chain[-1].kind == BLOB:
            # Below a blob: edit its (bounded) decoded value and store it again.
            node = chain[-1]
            assert node.body is not None
            root, holder = self._inside(path, depth, _decode(node.body))
            if only_if_missing and paths.get_in(root, path) is not MISSING:
                return False
            paths.set_in(root, path, value)
            changed = holder[path[depth - 1]]
            size = self._store(conn, account, node.path, node.pos, node.label, changed, depth, node)
            self._adjust(conn, account, chain[:-1], size - node.size)
            return True
        container = chain[-1] if chain else None
        segment = segments[depth]
        if container is not None:
            run = self._find_run(conn, account, container, segment)
            if run is not None:
                # Inside a run: edit the child's (bounded) decoded value, store the run again.
                key, found = run.children[run.at]
                root, holder = self._inside(path, depth + 1, found)
                if only_if_missing and paths.get_in(root, path) is not MISSING:
                    return False
                paths.set_in(root, path, value)
                children = list(run.children)
                children[run.at] = (key, holder[path[depth]])
                self._rewrite_run(conn, account, chain, run, children, run.at)
                return True
        # A new child of a split container (or of the bucket itself).
        child = _nest(segments[depth + 1 :], value)
        if container is None:
            pos = self._next_top_pos(conn, account)
            self._store(conn, account, _child(b"", segment), pos, _label(segment), child, 1, None)
            self._counted(conn, account, None, 1)
            return True
        row = conn.execute(_LAST_CHILD, (account, container.path)).fetchone()
        last_row = None if row is None else _Node(*row)
        if container.kind == ARRAY:
            length = self._length_after(last_row)
            if paths.position(segment, length + 1) != length:
                shown = paths.join(path[:depth])
                raise InvalidPathError(
                    f"{path[depth]!r} is not a position in the list at {shown!r}"
                    f" (positions run from 1 to {length + 1})"
                )
            self._add_child(conn, account, chain, last_row, length, None, str(length + 1), child)
        else:
            pos = 0 if last_row is None else last_row.pos + 1
            self._add_child(conn, account, chain, last_row, pos, segment, segment, child)
        return True

    def _delete(self, conn: Connection, account: str, path: Path, return_value: bool) -> str | None:
        """Remove the value at ``path``; its JSON text if ``return_value`` and it was there."""
        chain, segments = self._locate(conn, account, path)
        depth = len(chain)
        if not chain:
            return None
        node = chain[-1]
        if depth == len(segments):
            text = self._text(conn, account, node) if return_value else None
            self._remove(conn, account, chain)
            return text
        if node.kind != BLOB:
            return self._delete_in_run(conn, account, path, chain, segments, return_value)
        assert node.body is not None
        root, holder = self._inside(path, depth, _decode(node.body))
        found = paths.get_in(root, path)
        if found is MISSING:
            return None
        text = values.dump(found) if return_value else None
        paths.delete_in(root, path)
        changed = holder[path[depth - 1]]
        size = self._store(conn, account, node.path, node.pos, node.label, changed, depth, node)
        self._adjust(conn, account, chain[:-1], size - node.size)
        return text

    def _delete_in_run(
        self,
        conn: Connection,
        account: str,
        path: Path,
        chain: list[_Node],
        segments: list[str],
        return_value: bool,
    ) -> str | None:
        """Delete ``path``, in or below a child of the split container ``chain[-1]`` in a run."""
        depth = len(chain)
        run = self._find_run(conn, account, chain[-1], segments[depth])
        if run is None:
            return None
        key, value = run.children[run.at]
        if depth + 1 == len(segments):
            children = run.children[: run.at] + run.children[run.at + 1 :]
            self._rewrite_run(conn, account, chain, run, children, None)
            return values.dump(value) if return_value else None
        root, holder = self._inside(path, depth + 1, value)
        found = paths.get_in(root, path)
        if found is MISSING:
            return None
        text = values.dump(found) if return_value else None
        paths.delete_in(root, path)
        children = list(run.children)
        children[run.at] = (key, holder[path[depth]])
        self._rewrite_run(conn, account, chain, run, children, run.at)
        return text

    def _remove(self, conn: Connection, account: str, chain: list[_Node]) -> None:
        """Delete the stored node ``chain[-1]`` and its subtree from its split parent.

        Removing an item that is not the last of a split array renumbers the
        items after it, rewriting their rows (and the rows below them): the
        cost grows with the rows of that array, not with the whole document.
        """
        node = chain[-1]
        self._delete_below(conn, account, node.path)
        conn.execute("DELETE FROM nodes WHERE account = ? AND path = ?", (account, node.path))
        parent = chain[-2] if len(chain) > 1 else None
        self._counted(conn, account, parent, -1)
        if parent is None:
            return
        if parent.kind == ARRAY:
            self._shift_items(conn, account, parent.path, node.pos)
        entry = len(node.label.encode()) + node.size
        if parent.size > 2 + entry:
            entry += 1  # the comma that separated it from a sibling
        self._adjust(conn, account, chain[:-1], -entry)

    def _shift_items(self, conn: Connection, account: str, array: bytes, removed: int) -> None:
        """Move the items after index ``removed`` of a split array up by one.

        Its later runs only change ``pos``; its later items with rows of their
        own are renamed, with the rows and ``members`` entries below them (the
        cost grows with the rows of that array, not with the whole document).
        """
        conn.execute(
            "UPDATE nodes SET pos = pos - 1 WHERE account = ? AND parent = ? AND pos > ?"
            " AND kind = ?",
            (account, array, removed, RUN),
        )
        later = conn.execute(
            "SELECT 1 FROM nodes WHERE account = ? AND parent = ? AND pos > ? AND kind != ?"
            " LIMIT 1",
            (account, array, removed, RUN),
        ).fetchone()
        if later is None:
            return
        base = len(array) + 1
        moved: list[tuple[Any, ...]] = []
        old_paths: list[tuple[str, bytes]] = []
        rows = self._subtree(
            conn, account, array, _ROWS, f" AND NOT (parent = ? AND kind = {RUN})", (array,)
        )
        for path, parent, pos, kind, label, body, size, children in rows:
            end = path.find(b"\x00", base)
            segment = path[base:] if end < 0 else path[base:end]
            number = int(segment)
            if number <= removed + 1:
                continue
            new_prefix = array + b"\x00" + str(number - 1).encode()
            old_len = base + len(segment)
            new_path = new_prefix + path[old_len:]
            if parent == array:
                new_parent, new_pos = parent, pos - 1
            else:
                new_parent, new_pos = new_prefix + parent[old_len:], pos
            old_paths.append((account, path))
            moved.append(
                (account, new_path, new_parent, new_pos, kind, label, body, size, children)
            )
        conn.executemany("DELETE FROM nodes WHERE account = ? AND path = ?", old_paths)
        conn.executemany(_INSERT, moved)
        renamed: list[tuple[str, bytes, bytes]] = []
        old_paths = []
        for path, run in conn.execute(
            "SELECT path, run FROM members WHERE account = ? AND path > ? AND path < ?",
            (account, array + b"\x00", array + b"\x01"),
        ).fetchall():
            segment = path[base : path.find(b"\x00", base)]
            if int(segment) <= removed + 1:
                continue
            new_prefix = array + b"\x00" + str(int(segment) - 1).encode()
            old_len = base + len(segment)
            old_paths.append((account, path))
            renamed.append((account, new_prefix + path[old_len:], new_prefix + run[old_len:]))
        conn.executemany("DELETE FROM members WHERE account = ? AND path = ?", old_paths)
        conn.executemany(_INSERT_MEMBER, renamed)

    def clear(self, account: str) -> int:
        with self._write_to(account) as (conn, revision):
            conn.execute("DELETE FROM nodes WHERE account = ?", (account,))
            conn.execute("DELETE FROM members WHERE account = ?", (account,))
            conn.execute("UPDATE accounts SET children = 0 WHERE id = ?", (account,))
            self._log(conn, account, revision, [("delete", (), None)])
        return revision

    # templates

    def get_template(self, account: str, name: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT source FROM templates WHERE account = ? AND name = ?", (account, name)
            ).fetchone()
            return None if row is None else str(row[0])

    def set_template(self, account: str, name: str, source: str) -> None:
        with self._write_to(account) as (conn, revision):
            self._log(conn, account, revision, [("template", (name,), source)])
            updated = conn.execute(
                "UPDATE templates SET source = ? WHERE account = ? AND name = ?",
                (source, account, name),
            ).rowcount
            if not updated:
                conn.execute(
                    "INSERT INTO templates (account, name, pos, source) VALUES (?, ?,"
                    " (SELECT coalesce(max(pos), -1) + 1 FROM templates WHERE account = ?), ?)",
                    (account, name, account, source),
                )

    def delete_template(self, account: str, name: str) -> bool:
        with self._write_to(account) as (conn, revision):
            self._log(conn, account, revision, [("template", (name,), None)])
            gone: int = conn.execute(
                "DELETE FROM templates WHERE account = ? AND name = ?", (account, name)
            ).rowcount
            return gone > 0

    def list_templates(self, account: str) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name FROM templates WHERE account = ? ORDER BY pos", (account,)
            ).fetchall()
            return [str(row[0]) for row in rows]
