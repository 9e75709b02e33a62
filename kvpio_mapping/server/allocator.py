"""The C allocator's part in a worker's memory: large answers give their memory back.

glibc raises its threshold for mapping a block on its own after the first
large free, so later large texts (a whole-bucket read's answer) come from
its heap, and keep their memory after they are freed; and the pages a large
read freed inside an arena stay with the process until something trims them.
Without either, a worker would stay at the high mark of its largest answers.
Where the C library is not glibc (no ``mallopt``, no ``malloc_trim``) these
do nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

LARGE_ALLOCATION: Final = 2**20
"""Bytes from which the C allocator maps each block on its own, freed at once."""
_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter


def _libc_function(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


_mallopt: Final = _libc_function("mallopt")
_malloc_trim: Final = _libc_function("malloc_trim")


def map_large_blocks() -> None:
    """Keep the mapping threshold at :data:`LARGE_ALLOCATION` (once per worker process)."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION)


def give_back() -> None:
    """Return the free pages of every arena to the system (after a large read)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
