"""An in-memory storage: the reference behaviour, for tests and throwaway servers."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ... import paths, values
from ...paths import MISSING, Path
from .base import (
    CHANGE_LOG_REVISIONS,
    CHANGES_BATCH,
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
    UnknownAccountError,
    appendable,
    changes_after,
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


@dataclass
class _Account:
    id: str
    email: str
    key_digest: str
    reads: int = 0
    revision: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    log: deque[Change] = field(default_factory=deque)
    log_start: int = 0
    """The revision the log starts after (an account restored from a copy has no earlier log)."""

    def logged(self, entries: list[tuple[ChangeKind, Path, str | None]]) -> None:
        """Raise the revision and log its changes, dropping those the log no longer keeps."""
        self.revision += 1
        log = self.log
        log.extend(Change(self.revision, kind, path, text) for kind, path, text in entries)
        floor = self.revision - CHANGE_LOG_REVISIONS
        while log and log[0].revision <= floor:
            log.popleft()


class MemoryStorage(Storage):
    """Everything in one process's memory, behind one lock; gone when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}

    def create_account(self, id: str, email: str, api_key: str | None = None) -> str:
        check_account(id, email)
        key = api_key if api_key is not None else new_key()
        digest = hash_key(key)
        with self._lock:
            if id in self._accounts or self._find(digest) is not None:
                raise AccountExistsError(f"account {id!r} or its API key exists already")
            self._accounts[id] = _Account(id, email, digest)
        return key

    def ensure_account(self, api_key: str, id: str = "default", email: str = "") -> str:
        check_account(id, email)
        with self._lock:
            found = self._find(hash_key(api_key))
            if found is not None:
                return found.id
            if id in self._accounts:
                raise AccountExistsError(f"account {id!r} exists with another API key")
            self._accounts[id] = _Account(id, email, hash_key(api_key))
            return id

    def _find(self, digest: str) -> _Account | None:
        for account in self._accounts.values():
            if same_digest(account.key_digest, digest):
                return account
        return None

    def authenticate(self, api_key: str) -> str | None:
        with self._lock:
            found = self._find(hash_key(api_key))
            return found.id if found is not None else None

    def _state(self, account: str) -> _Account:
        """The account's state (the caller holds the lock), or :class:`UnknownAccountError`."""
        found = self._accounts.get(account)
        if found is None:
            raise UnknownAccountError(account)
        return found

    def _public(self, account: _Account) -> Account:
        size = len(values.encode(account.data))
        return Account(account.id, account.email, account.reads, size)

    def account(self, id: str) -> Account | None:
        with self._lock:
            found = self._accounts.get(id)
            return self._public(found) if found is not None else None

    def list_accounts(self) -> list[Account]:
        with self._lock:
            return [self._public(self._accounts[id]) for id in sorted(self._accounts)]

    def delete_account(self, id: str) -> bool:
        with self._lock:
            return self._accounts.pop(id, None) is not None

    def add_reads(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            for id, count in counts.items():
                if id in self._accounts:
                    self._accounts[id].reads += count

    def account_records(self) -> list[AccountRecord]:
        with self._lock:
            return [
                AccountRecord(state.id, state.email, state.key_digest, state.reads, state.revision)
                for state in (self._accounts[id] for id in sorted(self._accounts))
            ]

    def restore_account(
        self, record: AccountRecord, bucket: Mapping[str, Any], templates: Sequence[tuple[str, str]]
    ) -> None:
        with self._lock:
            if record.id in self._accounts or self._find(record.key_digest) is not None:
                raise AccountExistsError(f"account {record.id!r} or its API key exists already")
            self._accounts[record.id] = _Account(
                record.id,
                record.email,
                record.key_digest,
                record.reads,
                record.revision,
                values.copy(dict(bucket)),
                dict(templates),
                log_start=record.revision,
            )

    def revision(self, account: str) -> int:
        with self._lock:
            found = self._accounts.get(account)
            return 0 if found is None else found.revision

    def read(self, account: str, path: Path) -> tuple[str | None, int]:
        with self._lock:
            state = self._state(account)
            found = paths.get_in(state.data, path)
            text = None if found is MISSING else values.encode(found).decode()
            return text, state.revision

    def get_all(self, account: str) -> str:
        with self._lock:
            return values.encode(self._state(account).data).decode()

    def count(self, account: str, path: Path = ()) -> tuple[int | None, int]:
        with self._lock:
            state = self._state(account)
            found = paths.get_in(state.data, path)
            if found is MISSING:
                return None, state.revision
            if type(found) not in (dict, list):
                raise uncountable(path, found)
            return len(found), state.revision

    def keys(self, account: str, path: Path = ()) -> list[str]:
        with self._lock:
            found = paths.get_in(self._state(account).data, path)
            if type(found) is dict:
                return list(found)
            if type(found) is list:
                return [str(position) for position in range(1, len(found) + 1)]
            return []

    def commit(
        self,
        account: str,
        operations: Sequence[Operation],
        checks: Sequence[Check] = (),
        key_digest: str | None = None,
    ) -> Committed:
        check_operations(operations)
        with self._lock:
            state = self._state(account)
            if key_digest is not None and not same_digest(state.key_digest, key_digest):
                raise UnknownAccountError(account)
            failures: list[Failure] = []
            for index, check in enumerate(checks):
                found = paths.get_in(state.data, check.path)
                text = None if found is MISSING else values.dump(found)
                failed = failure(index, check, text)
                if failed is not None:
                    failures.append(failed)
            if failures:
                raise CheckFailedError(failures)
            data = values.copy(state.data) if len(operations) > 1 else state.data
            results = [_apply(data, operation) for operation in operations]
            state.data = data
            state.logged(logged_commit(operations, results))
            return Committed(state.revision, results)

    def changes(self, account: str, since: int, limit: int = CHANGES_BATCH) -> Changes:
        with self._lock:
            state = self._accounts.get(account)
            if state is None:
                raise UnknownAccountError(account)
            floor = max(state.log_start, state.revision - CHANGE_LOG_REVISIONS)
            logged = [change for change in state.log if change.revision > since]
            return changes_after(since, state.revision, floor, logged, limit)

    def clear(self, account: str) -> int:
        with self._lock:
            state = self._state(account)
            state.data = {}
            state.logged([("delete", (), None)])
            return state.revision

    def get_template(self, account: str, name: str) -> str | None:
        with self._lock:
            return self._state(account).templates.get(name)

    def set_template(self, account: str, name: str, source: str) -> None:
        with self._lock:
            state = self._state(account)
            state.templates[name] = source
            state.logged([("template", (name,), source)])

    def delete_template(self, account: str, name: str) -> bool:
        with self._lock:
            state = self._state(account)
            state.logged([("template", (name,), None)])
            return state.templates.pop(name, None) is not None

    def list_templates(self, account: str) -> list[str]:
        with self._lock:
            return list(self._state(account).templates)


def _apply(data: dict[str, Any], operation: Operation) -> str | None:
    """Apply one operation to a bucket's data in place; its result as JSON text.

    A single operation raises before changing anything; the copy a commit of
    several works on keeps a failure from leaving a half-applied commit behind.
    """
    kind, path, value = operation
    if kind == "set":
        paths.set_in(data, path, values.copy(value))
        return None
    found = paths.get_in(data, path)
    if kind in ("delete", "pop"):
        paths.delete_in(data, path)
        return None if kind == "delete" or found is MISSING else values.dump(found)
    if kind == "increment":
        total = incremented(path, found, value)
        paths.set_in(data, path, total)
        return values.dump(total)
    if kind == "append":
        appendable(path, found)
        if found is MISSING:
            paths.set_in(data, path, [values.copy(value)])
            return "1"
        found.append(values.copy(value))
        return str(len(found))
    mergeable(path, found)
    if found is MISSING:
        paths.set_in(data, path, values.copy(value))
    else:
        found.update(values.copy(value))
    return None
