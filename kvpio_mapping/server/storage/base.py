"""The storage interface: accounts, bucket values and templates, nothing of HTTP.

Every backend implements :class:`Storage` and passes the one conformance
suite in ``tests/server/test_storage_conformance.py``. Paths arrive already
validated as tuples of segments (:mod:`kvpio_mapping.paths`); values arrive
decoded and checked (:mod:`kvpio_mapping.values`) and leave as compact JSON
text, so a read can be sent without decoding it again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...paths import Path


class AccountExistsError(ValueError):
    """An account with that id, or that API key, exists already."""


@dataclass(frozen=True)
class Account:
    """What the account endpoint tells: never the API key."""

    id: str
    email: str
    reads: int
    size: int


def hash_key(api_key: str) -> str:
    """The stored form of an API key: keys are kept only as SHA-256 digests."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return secrets.token_urlsafe(24)


def same_digest(a: str, b: str) -> bool:
    """Compare two key digests in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


class Storage(ABC):
    """One account-partitioned store of JSON values and templates.

    Implementations are safe to call from several threads and, where the
    backend allows it, from several processes on the same database.
    """

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
    def add_reads(self, counts: Mapping[str, int]) -> None:
        """Add counted reads to accounts, in one write for the whole batch."""

    # bucket values

    @abstractmethod
    def get(self, account: str, path: Path) -> str | None:
        """The JSON text of the value at ``path``, or None if there is none."""

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
    def set(self, account: str, path: Path, value: Any, *, only_if_missing: bool = False) -> bool:
        """Store ``value`` at ``path``, creating missing or scalar parents as objects.

        With ``only_if_missing``, store nothing and return False when a value
        is already there. Raises :class:`~kvpio_mapping.errors.InvalidPathError`
        (changing nothing) for a segment below a list that is not a position
        from 1 to one past its end.
        """

    @abstractmethod
    def set_many(self, account: str, items: Sequence[tuple[Path, Any]]) -> None:
        """Apply :meth:`set` for each pair in order, atomically: all or none."""

    @abstractmethod
    def delete(self, account: str, path: Path, *, return_value: bool = False) -> str | None:
        """Remove the value at ``path`` and everything below it.

        Later items of a list move up. Returns the removed value's JSON text
        when ``return_value`` is true and something was there, else None.
        """

    @abstractmethod
    def clear(self, account: str) -> None:
        """Remove every value of the account (templates stay)."""

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

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections; the storage is not used afterwards."""
