"""Sharing a bucket safely: atomic operations, conditional writes and transactions.

The client side of docs/protocol.md, "Safe sharing". :class:`SharingMixin`
gives :class:`~kvpio_mapping.KVBucket` its ``increment``, ``append``,
``merge``, ``versioned``, ``set_if``, ``delete_if`` and ``transact``;
:class:`Transaction` is the mapping a transaction's function works on.
The operations themselves are flows of :mod:`kvpio_mapping.operations`
(the commit's is :meth:`TransactionState.commit`), which the async client
drives too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar, overload

from . import operations, paths, protocol, values
from .cache import NOT_CACHED
from .errors import ConflictError, TransactionConflictError
from .operations import ClientState, Flow
from .paths import MISSING
from .protocol import Answer

DEFAULT_RETRIES: Final = 100
"""How many times :meth:`SharingMixin.transact` runs a function again after a conflict.

A retry runs at once, on the values the refusal carried: they are current
then, and would not be after a pause. Every conflict means another commit
succeeded, so the clients sharing a key always progress; with four clients
incrementing one key as fast as they can, the chance that one transaction
loses 100 times in a row is about (3/4)**100, 3e-13.
"""

_T = TypeVar("_T")
_Operation = tuple[str, str, Any]
"""A buffered write of a transaction: (op, full path, value)."""


class Versioned(NamedTuple):
    """A value with the ETag it had on the server: pass ``etag`` to a conditional write."""

    value: Any
    etag: str


# requests and answers


def commit_body(checks: dict[str, str | None], operations: list[_Operation]) -> bytes:
    """The JSON body of ``POST /v1/bucket/?commit=true``."""
    return values.encode(
        {
            "checks": [{"path": path, "etag": etag} for path, etag in checks.items()],
            "operations": [
                {"op": kind, "path": path}
                if kind == "delete"
                else {"op": kind, "path": path, "value": value}
                for kind, path, value in operations
            ],
        }
    )


def failed_checks(response: Answer) -> dict[str, tuple[Any, str | None]]:
    """Path -> (current value or MISSING, ETag) of each check a 412 to a commit names."""
    failed: dict[str, tuple[Any, str | None]] = {}
    for entry in protocol.refusal(response)["failed"]:
        failed[entry["path"]] = (entry.get("value", MISSING), entry["etag"])
    return failed


def make_versioned(key: str, value: Any, etag: str | None) -> Versioned:
    """The caller's copy of ``value`` with its ETag; KeyError if it is MISSING."""
    if value is MISSING:
        raise KeyError(key)
    assert etag is not None
    return Versioned(values.copy(value), etag)


def conflict(retries: int, seeds: dict[str, tuple[Any, str | None]]) -> TransactionConflictError:
    """The error of a transaction that lost all of its ``retries + 1`` attempts."""
    shown = ", ".join(repr(path) for path in seeds)
    return TransactionConflictError(
        f"the transaction met a conflicting write on each of its {retries + 1} attempts"
        f" (last at {shown}); nothing of it was written",
        retries + 1,
    )


class SharingMixin:
    """The safe-sharing methods of :class:`~kvpio_mapping.KVBucket`."""

    if TYPE_CHECKING:
        _state: ClientState

        def _full(self, key: object) -> str: ...
        def _run(self, flow: Flow[_T]) -> _T: ...

    # atomic operations

    def increment(self, key: str, by: int | float = 1) -> Any:
        """Add ``by`` to the number at ``key`` (missing counts as 0) and return the new number.

        One request, atomic on the server: concurrent increments never lose
        one another. :class:`~kvpio_mapping.ConflictError` if the value there
        is not a number.
        """
        operations.check_number(by)
        return self._run(operations.increment(self._state, self._full(key), by))

    def append(self, key: str, value: Any) -> int:
        """Add ``value`` at the end of the list at ``key`` (missing counts as ``[]``).

        Returns the new item's 1-based position (its path is ``f"{key}/{position}"``).
        One request, atomic. :class:`~kvpio_mapping.ConflictError` if the
        value there is not a list.
        """
        return self._run(operations.append(self._state, self._full(key), value))

    def merge(self, key: str, members: dict[str, Any]) -> None:
        """Set each member of ``members`` below the object at ``key`` in one atomic request.

        Other members stay (a shallow merge); missing counts as ``{}``.
        :class:`~kvpio_mapping.ConflictError` if the value there is not an object.
        """
        self._run(operations.merge(self._state, self._full(key), members))

    # conditional reads and writes

    def versioned(self, key: str) -> Versioned:
        """The value at ``key`` with its ETag (from the cache when fresh); KeyError if absent."""
        value, etag = self._run(operations.versioned(self._state, self._full(key)))
        return make_versioned(key, value, etag)

    def set_if(self, key: str, value: Any, etag: str | None) -> bool:
        """Store ``value`` at ``key`` only if its value still has ``etag`` (None: if absent).

        Returns whether it stored. When it did not, the answer carried the
        current value, which the cache keeps: a following :meth:`versioned`
        costs no request.
        """
        full = self._full(key)
        body = values.encode(value)
        stored, _current = self._run(operations.write_if(self._state, "POST", full, body, etag))
        return stored

    def delete_if(self, key: str, etag: str) -> bool:
        """Delete ``key`` only if its value still has ``etag``; whether it did."""
        full = self._full(key)
        deleted, _current = self._run(operations.write_if(self._state, "DELETE", full, None, etag))
        return deleted

    # transactions

    def transact(self, fn: Callable[[Transaction], _T], *, retries: int = DEFAULT_RETRIES) -> _T:
        """Run ``fn(tx)`` and commit what it wrote atomically, if nothing it read has changed.

        ``tx`` is a mapping view of this bucket that records what ``fn``
        reads (each value with its ETag; fresh cached values cost no request)
        and buffers what it writes (``tx[k] = v``, ``del tx[k]``,
        ``tx.increment``, ``tx.append``). The commit is one request whose
        checks are those reads; if one of them changed meanwhile, ``fn`` runs
        again on the current values, which the refusal carried, up to
        ``retries`` more times, then :class:`~kvpio_mapping.TransactionConflictError`.
        An exception in ``fn`` writes nothing and propagates. Returns what
        ``fn`` returned. ``fn`` may run several times: keep side effects out.
        """
        seeds: dict[str, tuple[Any, str | None]] = {}
        for _attempt in range(retries + 1):
            tx = Transaction(self, seeds)
            result = fn(tx)
            failed = self._run(tx.commit())
            if failed is None:
                return result
            seeds = failed
        raise conflict(retries, seeds)

    @overload
    def transactional(
        self, fn: Callable[..., _T], *, retries: int = DEFAULT_RETRIES
    ) -> Callable[..., _T]: ...
    @overload
    def transactional(
        self, fn: None = None, *, retries: int = DEFAULT_RETRIES
    ) -> Callable[[Callable[..., _T]], Callable[..., _T]]: ...

    def transactional(self, fn: Any = None, *, retries: int = DEFAULT_RETRIES) -> Any:
        """Decorate ``f(tx, *args)`` into ``g(*args)`` that runs it in :meth:`transact`.

        Use it bare (``@bucket.transactional``) or with ``retries``.
        """

        def decorate(function: Callable[..., _T]) -> Callable[..., _T]:
            def run(*args: Any, **kwargs: Any) -> _T:
                return self.transact(lambda tx: function(tx, *args, **kwargs), retries=retries)

            run.__name__ = getattr(function, "__name__", "transaction")
            run.__doc__ = function.__doc__
            run.__wrapped__ = function  # type: ignore[attr-defined]
            return run

        return decorate(fn) if fn is not None else decorate


def _reach(operation: _Operation) -> str:
    """The path whose value ``operation`` may change: a list item's delete moves its
    later siblings up, so it reaches the whole list."""
    kind, path, _value = operation
    return paths.deleted_reach(path) if kind == "delete" else path


def _within(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or lies below it."""
    return path == top or path.startswith(top + "/")


class TransactionState:
    """What a transaction of either client records and buffers, and its flows.

    Reads record the ETag of what they saw (the checks of the commit);
    writes are buffered until the function returns.
    """

    def __init__(self, bucket: Any, seeds: dict[str, tuple[Any, str | None]]) -> None:
        self._bucket = bucket
        self._seeds = seeds
        self._seen: dict[str, tuple[Any, str | None]] = {}
        self._operations: list[_Operation] = []
        self._done = False

    # reads

    def _base(self, full: str) -> Flow[Any]:
        """The value at ``full`` in the bucket (shared, or MISSING), recording what it checks."""
        where = full
        while True:
            for known in (self._seen, self._seeds):
                found = known.get(where)
                if found is not None:
                    self._seen[where] = found
                    return paths.get_in(found[0], _rest(full, where))
            if "/" not in where:
                break
            where = where.rsplit("/", 1)[0]
        state: ClientState = self._bucket._state
        cache = state.cache
        if cache.enabled:
            cached = cache.tagged(full)
            if cached is not NOT_CACHED:
                where, value, etag = cached
                self._seen[where] = (value, etag)
                return paths.get_in(value, _rest(full, where))
        generation = cache.generation
        value, etag = protocol.tagged((yield protocol.read(full)))
        cache.store(full, value, generation, etag)
        self._seen[full] = (value, etag)
        return value

    def _value(self, full: str) -> Flow[Any]:
        """The value at ``full`` with this transaction's writes applied (shared, or MISSING)."""
        top = full
        while True:
            touching = [
                op
                for op in self._operations
                if _within(_reach(op), top) or _within(top, _reach(op))
            ]
            # A list item's delete above ``top`` widens it to the list: look again from there.
            wider = min(
                [top, *(_reach(op) for op in touching if _within(top, _reach(op)))], key=len
            )
            if wider == top:
                break
            top = wider
        if not touching:
            return (yield from self._base(full))
        root: dict[str, Any] = {}
        base = yield from self._base(top)
        segments = tuple(top.split("/"))
        if base is not MISSING:
            paths.set_in(root, segments, values.copy(base))
        for operation in touching:
            _apply(root, operation)
        return paths.get_in(root, tuple(full.split("/")))

    def _found(self, key: object) -> Flow[Any]:
        """The value at ``key`` as this transaction sees it (shared), or MISSING, also for
        a key that can never be stored (answered as ``dict`` answers an absent key)."""
        full = self._bucket._valid(key)
        if full is None:
            return MISSING
        return (yield from self._value(full))

    def _lookup(self, key: str) -> Flow[Any]:
        """The caller's copy of the value at ``key`` as this transaction sees it; KeyError."""
        found = yield from self._found(key)
        if found is MISSING:
            raise KeyError(key)
        return values.copy(found)

    def _present(self, key: object) -> Flow[bool]:
        return (yield from self._found(key)) is not MISSING

    def _removal(self, key: str) -> Flow[None]:
        """Buffer the delete of ``key``; KeyError if it is not there."""
        if not (yield from self._present(key)):
            raise KeyError(key)
        self._write("delete", key, None)

    # writes

    def _write(self, kind: str, key: str, value: Any) -> None:
        if self._done:
            raise RuntimeError("this transaction is over: write inside the function")
        full = self._bucket._full(key)
        values.check(value)
        self._operations.append((kind, full, values.copy(value)))

    def __setitem__(self, key: str, value: Any) -> None:
        self._write("set", key, value)

    def increment(self, key: str, by: int | float = 1) -> None:
        """Add ``by`` to the number at ``key`` when the transaction commits."""
        operations.check_number(by)
        self._write("increment", key, by)

    def append(self, key: str, value: Any) -> None:
        """Add ``value`` to the end of the list at ``key`` when the transaction commits."""
        self._write("append", key, value)

    # commit

    def commit(self) -> Flow[dict[str, tuple[Any, str | None]] | None]:
        """Send the writes with the reads as checks; the failed checks' values on a conflict.

        A transaction that wrote nothing sends nothing.
        """
        self._done = True
        pending = self._operations
        if not pending:
            return None
        state: ClientState = self._bucket._state
        cache = state.cache
        checks = {path: etag for path, (_value, etag) in self._seen.items()}
        request = protocol.commit(commit_body(checks, pending))
        written = list(dict.fromkeys(_reach(operation) for operation in pending))
        generation = cache.generation
        try:
            answer = yield request
        except BaseException:
            _forget(state, written)  # the commit may have reached the server
            raise
        if answer.status_code == 412:
            # Refused, so nothing changed: what the cache holds stays right.
            failed = failed_checks(answer)
            for path, (value, etag) in failed.items():
                cache.store(path, value, generation, etag)
            return failed
        _forget(state, written)
        results = protocol.document(answer, dict)["results"]
        generation += len(written)
        for index, (kind, path, value) in enumerate(pending):
            later = pending[index + 1 :]
            if any(_within(path, _reach(op)) or _within(_reach(op), path) for op in later):
                continue
            if kind == "set":
                cache.store(path, value, generation, values.etag(values.encode(value)))
            elif kind == "increment":
                total = results[index]
                cache.store(path, total, generation, values.etag(values.encode(total)))
        return None


class Transaction(TransactionState, MutableMapping[str, Any]):
    """What a transaction's function sees: the bucket as of its reads, plus its own writes.

    Reads record the ETag of what they saw (the checks of the commit);
    writes are buffered until the function returns. Listing keys is not
    offered (no ETag covers the whole bucket): read an object and list its
    keys instead, ``tx["users"].keys()``.
    """

    def __getitem__(self, key: str) -> Any:
        return self._bucket._run(self._lookup(key))

    def __contains__(self, key: object) -> bool:
        return self._bucket._run(self._present(key))  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a transaction does not list keys: read an object and list its keys")

    def __len__(self) -> int:
        raise TypeError("a transaction does not count keys: read an object and count its keys")

    def __delitem__(self, key: str) -> None:
        self._bucket._run(self._removal(key))


def _forget(state: ClientState, written: list[str]) -> None:
    """Drop cached reads of each written path and tell the write listeners."""
    for path in written:
        with state.writing(path):
            pass


def _rest(full: str, where: str) -> paths.Path:
    return tuple(full[len(where) + 1 :].split("/")) if full != where else ()


def _apply(root: dict[str, Any], operation: _Operation) -> None:
    """Apply a buffered write to ``root`` as the server will (for reads inside the transaction)."""
    kind, full, value = operation
    segments = tuple(full.split("/"))
    if kind == "set":
        paths.set_in(root, segments, values.copy(value))
    elif kind == "delete":
        paths.delete_in(root, segments)
    else:
        found = paths.get_in(root, segments)
        if kind == "increment":
            found = 0 if found is MISSING else found
            if type(found) not in (int, float):
                raise ConflictError(
                    f"cannot increment the value at {full!r}: it is not a number", 409
                )
            paths.set_in(root, segments, found + value)
        else:
            found = [] if found is MISSING else found
            if type(found) is not list:
                raise ConflictError(
                    f"cannot append to the value at {full!r}: it is not a list", 409
                )
            paths.set_in(root, segments, [*found, values.copy(value)])
