"""Client objects that must start afresh in a forked child: locks, pooled sockets, streams.

Each registers itself once with :func:`reset_after_fork`; after ``os.fork()``
the child calls its ``_after_fork()``, so it never uses a lock another thread
of the parent held or a socket the parent still reads.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_registered: weakref.WeakValueDictionary[int, ForkAware] = weakref.WeakValueDictionary()


def reset_after_fork(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in the child of every later ``os.fork()``, while ``obj`` lives."""
    _registered[id(obj)] = obj


def _reset_all() -> None:
    for obj in list(_registered.values()):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
