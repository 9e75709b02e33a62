"""Copy every account, with its values and templates, from one storage to another.

The copy is meant for a database no server writes to (stop the servers
first): each account is read and restored on its own, so writes during
the copy could leave the destination between two states. Accounts keep
their API keys (as digests), read counts and revisions, so clients and
their cached revisions carry over. After copying, every account is read
back from the destination and compared with the source, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from .base import AccountExistsError, Storage


class CopyMismatchError(RuntimeError):
    """The destination does not read back what was copied into it."""


@dataclass(frozen=True)
class Tally:
    """What a storage holds of the copied accounts: the verification counts."""

    accounts: int = 0
    keys: int = 0
    templates: int = 0
    bytes: int = 0


def copy_storage(
    source: Storage,
    dest: Storage,
    progress: Callable[[int], object] | None = None,
) -> Tally:
    """Copy ``source``'s accounts into ``dest``, verify them, and return the verified tally.

    Refuses (:class:`AccountExistsError`) before copying anything if ``dest``
    already has one of the accounts or keys; raises :class:`CopyMismatchError`
    if an account reads back differently. ``progress`` is called with the
    number of accounts copied so far after each one.
    """
    records = source.account_records()
    taken = {(record.id, record.key_digest) for record in dest.account_records()}
    ids = {id for id, _ in taken}
    digests = {digest for _, digest in taken}
    clashes = [r.id for r in records if r.id in ids or r.key_digest in digests]
    if clashes:
        raise AccountExistsError(
            f"the destination already has the account(s) or key(s) of {', '.join(clashes)}"
        )
    expected: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for done, record in enumerate(records, 1):
        text = source.get_all(record.id)
        templates = [
            (name, source.get_template(record.id, name) or "")
            for name in source.list_templates(record.id)
        ]
        dest.restore_account(record, json.loads(text), templates)
        expected[record.id] = (text, templates)
        if progress is not None:
            progress(done)
    return _verify(dest, expected)


def _verify(dest: Storage, expected: dict[str, tuple[str, list[tuple[str, str]]]]) -> Tally:
    """Read every copied account back from ``dest``; the tally of what it holds."""
    copied = {record.id: record for record in dest.account_records()}
    keys = templates = size = 0
    for id, (text, sources) in expected.items():
        if id not in copied:
            raise CopyMismatchError(f"account {id!r} is missing from the destination")
        found = dest.get_all(id)
        if found != text:
            raise CopyMismatchError(f"account {id!r} reads back different values")
        names = dest.list_templates(id)
        if [(name, dest.get_template(id, name) or "") for name in names] != sources:
            raise CopyMismatchError(f"account {id!r} reads back different templates")
        keys += len(dest.keys(id))
        templates += len(names)
        size += len(found.encode())
    return Tally(len(expected), keys, templates, size)
