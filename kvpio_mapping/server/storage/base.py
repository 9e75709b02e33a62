"""The storage interface: accounts, bucket values and templates, nothing of HTTP.

Every backend implements :class:`Storage` and passes the one conformance
suite, :mod:`kvpio_mapping.testing.storage`. Paths arrive already
validated as tuples of segments (:mod:`kvpio_mapping.paths`); values arrive
decoded and checked (:mod:`kvpio_mapping.values`) and leave as compact JSON
text, so a read can be sent without decoding it again.

Every account has a *revision*: a counter that every committed write of its
values or templates raises by exactly one (a write that fails, or a commit
whose check fails, changes nothing and leaves it as it was). Reads and
commits report the revision they saw or made.

Every committed write also leaves its changes in the account's *change log*
(:meth:`Storage.changes`), kept for the last :data:`CHANGE_LOG_REVISIONS`
revisions: what a change feed reads, by revision, to follow the account from
any worker or host.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, NamedTuple, overload

from ... import paths, values
from ...paths import MISSING, Path
from .. import jsontext

MAX_COMMIT: Final = 1000
"""Most operations, and most checks, one commit may hold."""

CHANGE_LOG_REVISIONS: Final = 1000
"""Revisions the change log reaches back; older changes are dropped as new ones come."""

LOGGED_TEXT: Final = 16 * 1024
"""Longest value text a change keeps; a longer one is logged as ``reread``."""

LOGGED_ENTRIES: Final = 1000
"""Most entries one commit logs; a larger commit is logged as one ``reread`` of
the common ancestor of its paths, so a bulk write stays one cheap log row."""

CHANGES_BATCH: Final = 1000
"""About the most changes one :meth:`Storage.changes` answer holds (whole revisions)."""

ChangeKind = Literal["put", "delete", "reread", "template"]

OperationKind = Literal["set", "delete", "pop", "increment", "append", "merge"]
OPERATION_KINDS: Final[tuple[OperationKind, ...]] = (
    "set",
    "delete",
    "pop",
    "increment",
    "append",
    "merge",
)


class AccountExistsError(ValueError):
    """An account with that id, or that API key, exists already."""


class InvalidAccountError(ValueError):
    """An account id or e-mail address that no backend can store the same way."""


MAX_ACCOUNT_FIELD: Final = 256
"""Characters an account id or e-mail address may have."""


def check_account(id: str, email: str) -> None:
    """Refuse an account id or e-mail address that some backend cannot store the same way.

    PostgreSQL text cannot hold NUL, and control characters in an id would
    garble every log line and listing that names the account.
    """
    if not id:
        raise InvalidAccountError("an account id cannot be empty")
    for what, text in (("account id", id), ("e-mail address", email)):
        if len(text) > MAX_ACCOUNT_FIELD:
            raise InvalidAccountError(f"an {what} is at most {MAX_ACCOUNT_FIELD} characters")
        if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in text):
            raise InvalidAccountError(f"the {what} {text!r} contains a control character")


class UnknownAccountError(KeyError):
    """No account has that id (say, it was deleted while a request was on its way)."""


class StorageError(Exception):
    """The storage could not do its work; not the caller's fault, and nothing changed."""


class StorageBusyError(StorageError):
    """Other writers held the database's write lock past the wait bound: try again shortly."""


class StorageFullError(StorageError):
    """The disk holding the database is full: the write was refused, stored data is intact."""


@dataclass(frozen=True)
class Account:
    """What the account endpoint tells: never the API key."""

    id: str
    email: str
    reads: int
    size: int


class StorageUnavailableError(ConnectionError):
    """The database cannot be reached now; the same call may succeed later."""


@dataclass(frozen=True)
class AccountRecord:
    """An account as a copy between databases carries it: the key only as its stored digest."""

    id: str
    email: str
    key_digest: str
    reads: int
    revision: int


class ConflictError(ValueError):
    """An atomic operation does not fit the value it targets (say, incrementing a string)."""


class UncountableError(ConflictError):
    """A count of a value that is neither an object nor a list (``len(5)`` is a ``TypeError``)."""


class Operation(NamedTuple):
    """One write of a commit.

    ``set`` stores ``value``; ``delete`` removes what is at ``path``; ``pop``
    does the same and reports the removed value; ``increment`` adds the
    number ``value`` to the number at ``path`` (missing counts as 0);
    ``append`` adds ``value`` at the end of the list at ``path`` (missing
    counts as ``[]``); ``merge`` sets each member of the object ``value``
    below the object at ``path`` (missing counts as ``{}``).
    """

    kind: OperationKind
    path: Path
    value: Any = None


class TopLevelSets(Sequence[Operation]):
    """A batch's ``set`` of each member of ``members`` at the top level, made only as read.

    A bulk import of a million keys need not become a million operations to
    be stored: a backend may store the members at once from ``text``, the
    JSON object they were decoded from; any other reads the operations.
    Whoever makes one has checked that each key is a path of one segment
    (:func:`kvpio_mapping.paths.one_segment_each`) and each value a JSON
    value, so :func:`check_operations` passes it without a look. ``kinds``
    are the types of the values, found once for the maker's checks and the
    backend's. Indexing walks the members: it is for the odd look, not for loops.

    One made by :meth:`decoded_later` holds only the text at first: its
    members are decoded when first read, or meanwhile in a thread of their
    own once :meth:`decode_meanwhile` is called, so a backend can store rows
    from the text while they are decoded.
    """

    __slots__ = ("_decode", "_decoding", "_kinds", "_members", "text")

    def __init__(self, members: dict[str, Any], text: bytes) -> None:
        self._members: dict[str, Any] | None = members
        self._kinds: frozenset[type] | None = None
        self._decode: Callable[[], TopLevelSets] | None = None
        self._decoding: Future[TopLevelSets] | None = None
        self.text = text

    @classmethod
    def decoded_later(cls, text: bytes, decode: Callable[[], TopLevelSets]) -> TopLevelSets:
        """The sets ``decode()`` makes of ``text`` (or the error it raises), made when needed."""
        sets = cls({}, text)
        sets._members = None
        sets._decode = decode
        return sets

    @property
    def decoded(self) -> bool:
        """Whether the members are known: reading them does not wait."""
        return self._members is not None

    def decode_meanwhile(self) -> None:
        """Start decoding the members in a thread of their own, unless known or begun.

        Decoding holds the GIL throughout: call this just before a long call
        that lets go of it (a database statement), which then starts first.
        """
        if self._members is None and self._decoding is None:
            self._decoding = Future()
            threading.Thread(target=self._decode_into, name="kvpio-decode", daemon=True).start()

    def _decode_into(self) -> None:
        assert self._decoding is not None and self._decode is not None
        try:
            self._decoding.set_result(self._decode())
        except BaseException as exc:
            self._decoding.set_exception(exc)

    @property
    def members(self) -> dict[str, Any]:
        """The members, decoded first if need be; raises what decoding raised."""
        if self._members is None:
            assert self._decode is not None
            made = self._decode() if self._decoding is None else self._decoding.result()
            self._members, self._kinds = made.members, made._kinds
        return self._members

    @property
    def kinds(self) -> frozenset[type]:
        """The types of the values."""
        if self._kinds is None:
            self._kinds = frozenset(map(type, self.members.values()))
        return self._kinds

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Operation]:
        return (Operation("set", (key,), value) for key, value in self.members.items())

    @overload
    def __getitem__(self, index: int) -> Operation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Operation]: ...

    def __getitem__(self, index: int | slice) -> Operation | list[Operation]:
        if isinstance(index, slice):
            return list(self)[index]
        if not -len(self) <= index < len(self):
            raise IndexError("operation index out of range")
        return next(itertools.islice(self, index % len(self), None))


class Check(NamedTuple):
    """A condition of a commit: the value at ``path`` has the ETag ``etag``.

    ``etag`` None means nothing may be there; ``"*"`` means something must be.
    """

    path: Path
    etag: str | None


class Failure(NamedTuple):
    """A failed check: its index among the checks, its path, the current text and ETag."""

    check: int
    path: Path
    text: str | None
    etag: str | None


class CheckFailedError(Exception):
    """A commit's checks failed: nothing was changed."""

    def __init__(self, failures: list[Failure]) -> None:
        shown = ", ".join(repr(paths.join(failure.path)) for failure in failures)
        super().__init__(f"the value changed at {shown}")
        self.failures = failures


class Write(NamedTuple):
    """One account's commit, as :meth:`Storage.commit_group` takes it."""

    account: str
    operations: Sequence[Operation]
    checks: Sequence[Check] = ()
    key_digest: str | None = None
    """When given, the account must still have this key (:func:`hash_key`), checked in the
    commit's transaction: a key the server checked a moment ago never writes to an account
    deleted and made again with another key since."""


REFUSALS: Final = (CheckFailedError, ValueError, UnknownAccountError)
"""What :meth:`Storage.commit` raises for a write refused on its own merits (a failed
check, a conflict, a bad path or value, a gone account): nothing of the database's."""


class Committed(NamedTuple):
    """What a commit did: the revision it made and, per operation, its result as JSON text.

    Results: ``pop`` the removed value (None if nothing was there);
    ``increment`` the new number; ``append`` the new item's 1-based
    position; None for the others.
    """

    revision: int
    results: list[str | None]


class Change(NamedTuple):
    """One entry of the change log.

    ``put``: ``text`` is now the value at ``path`` (written as
    :func:`~kvpio_mapping.paths.set_in` would); ``delete``: nothing is at
    ``path`` any more (later items of a list moved up); ``reread``: the value
    at ``path`` changed but was too long to log, read it again; ``template``:
    the template named ``path[0]`` is now ``text`` (None: deleted).
    """

    revision: int
    kind: ChangeKind
    path: Path
    text: str | None


class Changes(NamedTuple):
    """An answer of :meth:`Storage.changes`.

    ``changes`` holds every change after the asked revision up to
    ``revision``, in order. ``complete`` is False when the log no longer
    reaches back to the asked revision (or it is ahead of the account's):
    then ``changes`` is empty and ``revision`` is the account's now.
    """

    revision: int
    changes: list[Change]
    complete: bool


def logged_changes(
    operation: Operation, result: str | None
) -> list[tuple[ChangeKind, Path, str | None]]:
    """The change-log entries of one applied operation, given its result.

    Both backends log a commit's operations with this, so a feed reads the
    same entries from either.
    """
    kind, path, value = operation
    entries: list[tuple[ChangeKind, Path, str | None]]
    if kind == "set":
        # A text of over 4 bytes a character is over LOGGED_TEXT characters: never made whole.
        text = jsontext.dump_within(value, 4 * LOGGED_TEXT)
        entries = [("put", path, text) if text is not None else ("reread", path, None)]
    elif kind in ("delete", "pop"):
        entries = [("delete", path, None)]
    elif kind == "increment":
        entries = [("put", path, result)]
    elif kind == "append":
        if result == "1":
            entries = [("put", path, "[" + jsontext.dump(value) + "]")]
        else:
            entries = [("put", (*path, str(result)), jsontext.dump(value))]
    elif value:
        entries = [("put", (*path, key), jsontext.dump(item)) for key, item in value.items()]
    else:
        entries = [("reread", path, None)]
    return [
        ("reread", at, None) if text is not None and len(text) > LOGGED_TEXT else (change, at, text)
        for change, at, text in entries
    ]


def logged_commit(
    operations: Sequence[Operation], results: Sequence[str | None]
) -> list[tuple[ChangeKind, Path, str | None]]:
    """The change-log entries of a whole commit (:func:`logged_changes` of each operation).

    Over :data:`LOGGED_ENTRIES` they become one ``reread`` of the paths'
    common ancestor, decided before encoding anything when the operations
    alone are too many. So does a commit of several changes with a
    ``reread`` among them: a follower reads a ``reread`` path after the whole
    commit, which would lose what the commit did there before its later
    changes (say, the order in which it created keys). A delete counts as a
    change of its parent: a key deleted and made again moves to the end.
    """
    if len(operations) > LOGGED_ENTRIES:
        reach = (_reach(op.kind, op.path) for op in operations)
        return [("reread", _common_ancestor(reach), None)]
    entries = [
        entry
        for operation, result in zip(operations, results, strict=True)
        for entry in logged_changes(operation, result)
    ]
    too_many = len(entries) > LOGGED_ENTRIES
    if too_many or (len(entries) > 1 and any(kind == "reread" for kind, _, _ in entries)):
        reach = (_reach(kind, at) for kind, at, _ in entries)
        return [("reread", _common_ancestor(reach), None)]
    return entries


def _reach(kind: str, path: Path) -> Path:
    """The highest path a change of ``kind`` at ``path`` can alter, key order included."""
    return path[:-1] if kind in ("delete", "pop") else path


def _common_ancestor(found: Iterable[Path]) -> Path:
    """The longest path that starts every path of ``found`` (``()`` when they share none)."""
    common: Path | None = None
    for path in found:
        if common is None:
            common = path
            continue
        depth = 0
        while depth < min(len(common), len(path)) and common[depth] == path[depth]:
            depth += 1
        common = common[:depth]
        if not common:
            break
    return common or ()


def changes_after(
    since: int, revision: int, floor: int, logged: Sequence[Change], limit: int
) -> Changes:
    """The answer of :meth:`Storage.changes` from a log holding every change after ``floor``.

    ``logged`` are the changes after ``since`` in order (more than ``limit``
    may be given: the answer ends at the first revision boundary past it).
    """
    if not floor <= since <= revision:
        return Changes(revision, [], False)
    if len(logged) <= limit:
        return Changes(revision, list(logged), True)
    end = limit
    while end < len(logged) and logged[end].revision == logged[end - 1].revision:
        end += 1
    if end == len(logged):
        return Changes(revision, list(logged), True)
    return Changes(logged[end - 1].revision, list(logged[:end]), True)


def failure(index: int, check: Check, text: str | None) -> Failure | None:
    """The failure of ``check`` when the value at its path is ``text``, or None if it holds."""
    tag = None if text is None else values.etag(text.encode())
    if check.etag is None:
        holds = tag is None
    elif check.etag == "*":
        holds = tag is not None
    else:
        holds = tag is not None and check.etag.removeprefix("W/") == tag
    return None if holds else Failure(index, check.path, text, tag)


def incremented(path: Path, current: Any, by: Any) -> int | float:
    """``current + by`` for an increment, or :class:`ConflictError` if it is not a number."""
    if current is MISSING:
        current = 0
    if type(current) not in (int, float):
        raise ConflictError(
            f"cannot increment the {_kind(current)} at {paths.join(path)!r}: it is not a number"
        )
    total = current + by
    values.check(total)
    return total  # type: ignore[no-any-return]


def appendable(path: Path, current: Any) -> None:
    """Raise :class:`ConflictError` unless an append can target ``current``."""
    if current is not MISSING and type(current) is not list:
        raise ConflictError(
            f"cannot append to the {_kind(current)} at {paths.join(path)!r}: it is not a list"
        )


def mergeable(path: Path, current: Any) -> None:
    """Raise :class:`ConflictError` unless a merge can target ``current``."""
    if current is not MISSING and type(current) is not dict:
        raise ConflictError(
            f"cannot merge into the {_kind(current)} at {paths.join(path)!r}: it is not an object"
        )


def uncountable(path: Path, value: Any) -> UncountableError:
    """The error of counting the scalar ``value`` at ``path``."""
    return UncountableError(
        f"cannot count the {_kind(value)} at {paths.join(path)!r}: it is not an object or a list"
    )


def _kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_operation(operation: Operation) -> None:
    """Refuse (``ValueError``) an operation whose value cannot be applied anywhere."""
    kind, path, value = operation
    if kind not in OPERATION_KINDS:
        raise ValueError(f"unknown operation {kind!r}")
    paths.check(path)
    if kind == "increment" and type(value) not in (int, float):
        raise ValueError(f"an increment needs a number, not {value!r}")
    if kind == "merge":
        if type(value) is not dict:
            raise ValueError("a merge needs a JSON object")
        for key in value:
            paths.check((key,))


def check_operations(operations: Sequence[Operation]) -> None:
    """:func:`check_operation` of each operation (a :class:`TopLevelSets` was checked when made)."""
    if type(operations) is TopLevelSets:
        return
    for operation in operations:
        check_operation(operation)


def hash_key(api_key: str) -> str:
    """The stored form of an API key: keys are kept only as SHA-256 digests."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key, never starting with ``-`` (a command line would read an option)."""
    while (key := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return key


def same_digest(a: str, b: str) -> bool:
    """Compare two key digests in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


class Storage(ABC):
    """One account-partitioned store of JSON values and templates.

    Implementations are safe to call from several threads and, where the
    backend allows it, from several processes on the same database. A call
    that fails for want of the database's time or space raises a
    :class:`StorageError` and changes nothing.
    """

    read_cache_hits = 0
    """Reads answered from a cache of the backend's own (for the server's metrics)."""
    read_cache_misses = 0

    reads_block: ClassVar[bool] = False
    """Whether a read may wait on the network: the server then runs reads off its event loop."""

    write_threads: ClassVar[int] = 1
    """Writes one server worker runs at once: one where the database has a single write
    lock, more where writes to different accounts go on side by side."""

    # accounts

    @abstractmethod
    def create_account(self, id: str, email: str, api_key: str | None = None) -> str:
        """Create an account and return its API key (a new random one if none given).

        Raises :class:`AccountExistsError` if the id or the key is taken.
        """

    @abstractmethod
    def ensure_account(self, api_key: str, id: str = "default", email: str = "") -> str:
        """Return the id of the account with ``api_key``, creating it if there is none."""

    @abstractmethod
    def authenticate(self, api_key: str) -> str | None:
        """The id of the account whose key is ``api_key``, or None."""

    @abstractmethod
    def account(self, id: str) -> Account | None:
        """The account's public facts, ``size`` computed now, or None if unknown."""

    @abstractmethod
    def list_accounts(self) -> list[Account]:
        """Every account, by id."""

    @abstractmethod
    def delete_account(self, id: str) -> bool:
        """Remove an account with all its values and templates; whether it existed."""

    @abstractmethod
    def account_records(self) -> list[AccountRecord]:
        """Every account with its key digest and revision, by id, for copying a database."""

    @abstractmethod
    def restore_account(
        self, record: AccountRecord, bucket: Mapping[str, Any], templates: Sequence[tuple[str, str]]
    ) -> None:
        """Create ``record``'s account holding ``bucket`` and the (name, source) ``templates``.

        All or nothing, at ``record.revision``, templates in the order given.
        Raises :class:`AccountExistsError` if the id or the key digest is taken.
        """

    @abstractmethod
    def add_reads(self, counts: Mapping[str, int]) -> None:
        """Add counted reads to accounts, in one write for the whole batch."""

    # bucket values

    @abstractmethod
    def revision(self, account: str) -> int:
        """The account's revision now (0 before its first write)."""

    @abstractmethod
    def read(self, account: str, path: Path) -> tuple[str | None, int]:
        """The JSON text of the value at ``path`` (None if there is none) and its revision.

        Both come from one snapshot: the value is the one the revision holds.
        """

    def get(self, account: str, path: Path) -> str | None:
        """The JSON text of the value at ``path``, or None if there is none."""
        return self.read(account, path)[0]

    @abstractmethod
    def get_all(self, account: str) -> str:
        """The whole bucket as the JSON text of one object (``{}`` when empty)."""

    @abstractmethod
    def keys(self, account: str, path: Path = ()) -> list[str]:
        """Child keys at ``path`` (top-level keys for ``()``), in order.

        An object's keys in insertion order; a list's positions ``"1"``..``"n"``;
        ``[]`` for a scalar or a missing path.
        """

    @abstractmethod
    def count(self, account: str, path: Path = ()) -> tuple[int | None, int]:
        """How many children the value at ``path`` has, and the revision, from one snapshot.

        An object's keys, a list's items, the top-level keys for ``()``; None
        if nothing is there. Kept by the storage, so it costs the same at any
        size. Raises :class:`UncountableError` for a scalar.
        """

    @abstractmethod
    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        """Apply ``operations`` in order if every check holds, atomically: all or none.

        Raises :class:`CheckFailedError` naming every failed check,
        :class:`ConflictError` for an operation that does not fit its target,
        :class:`~kvpio_mapping.errors.InvalidPathError` for a path a write
        cannot take, or ``ValueError`` for an operation refused by
        :func:`check_operation`; each changes nothing. Writes below a list
        follow :meth:`set`'s rules. :class:`UnknownAccountError` if the account
        is gone, or no longer has the key of ``key_digest`` (see :class:`Write`).
        """

    def commit_group(self, writes: Sequence[Write]) -> list[Committed | Exception]:
        """Commit each write as :meth:`commit` would, in order; each one's outcome, in order.

        A write refused (:data:`REFUSALS`) or failed is its exception in the
        list and changes nothing; the others still commit. Backends with one
        write lock commit the group in one transaction and one sync.
        """
        outcomes: list[Committed | Exception] = []
        for write in writes:
            try:
                outcomes.append(self.commit(*write))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def commit_group_now(self, writes: Sequence[Write]) -> list[Committed | Exception] | None:
        """:meth:`commit_group`, done only if it can be at once: None, doing nothing, if it
        would wait (on a lock, on the disk's sync), so the caller can do it in a thread.

        For a caller that must not wait, such as an event loop; this one never can.
        """
        return None

    def set(self, account: str, path: Path, value: Any, *, only_if_missing: bool = False) -> bool:
        """Store ``value`` at ``path``, creating missing or scalar parents as objects.

        With ``only_if_missing``, store nothing and return False when a value
        is already there. Raises :class:`~kvpio_mapping.errors.InvalidPathError`
        (changing nothing) for a segment below a list that is not a position
        from 1 to one past its end.
        """
        checks = [Check(path, None)] if only_if_missing else []
        try:
            self.commit(account, [Operation("set", path, value)], checks)
        except CheckFailedError:
            return False
        return True

    def set_many(self, account: str, items: Sequence[tuple[Path, Any]]) -> None:
        """Apply :meth:`set` for each pair in order, atomically: all or none."""
        self.commit(account, [Operation("set", path, value) for path, value in items])

    def delete(self, account: str, path: Path, *, return_value: bool = False) -> str | None:
        """Remove the value at ``path`` and everything below it.

        Later items of a list move up. Returns the removed value's JSON text
        when ``return_value`` is true and something was there, else None.
        """
        operation = Operation("pop" if return_value else "delete", path)
        return self.commit(account, [operation]).results[0]

    @abstractmethod
    def changes(self, account: str, since: int, limit: int = CHANGES_BATCH) -> Changes:
        """The logged changes after revision ``since``, from one snapshot.

        At most about ``limit`` changes, always whole revisions (one commit
        may log more). Raises :class:`UnknownAccountError` for an account
        that does not exist.
        """

    @abstractmethod
    def clear(self, account: str) -> int:
        """Remove every value of the account (templates stay); the revision it made."""

    # templates

    @abstractmethod
    def get_template(self, account: str, name: str) -> str | None:
        """The template's source, or None."""

    @abstractmethod
    def set_template(self, account: str, name: str, source: str) -> None:
        """Store a template's source under ``name``."""

    @abstractmethod
    def delete_template(self, account: str, name: str) -> bool:
        """Remove a template; whether it existed."""

    @abstractmethod
    def list_templates(self, account: str) -> list[str]:
        """Template names, in insertion order."""

    def ready(self) -> None:  # noqa: B027 - nothing to check for backends in memory
        """Return once the storage could take a write now; raise why it could not."""

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections; the storage is not used afterwards."""
