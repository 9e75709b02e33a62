"""What the ``kvpio`` commands do differently for a person at a terminal: ask, align.

A destructive command asks before acting when someone can answer (stdin
and stderr are terminals), and otherwise acts only with ``--yes``: a script
that forgot the flag stops instead of deleting. Tables get a header and
aligned columns on a terminal, and stay tab-separated for a pipe.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (``False`` for a closed or replaced stream)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class NotConfirmed(Exception):
    """A destructive command was not confirmed; the message says how to confirm it."""


def confirm(question: str, yes: bool) -> None:
    """Return if the user agreed (or passed ``--yes``); else raise :class:`NotConfirmed`."""
    if yes:
        return
    if not (is_terminal(sys.stdin) and is_terminal(sys.stderr)):
        raise NotConfirmed("not on a terminal, so nobody can confirm: pass --yes")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise NotConfirmed("not confirmed; nothing changed")


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows as aligned columns under ``header`` on a terminal, else as TSV without header."""
    texts = [[str(cell) for cell in row] for row in rows]
    if not is_terminal(sys.stdout):
        for row in texts:
            sys.stdout.write("\t".join(row) + "\n")
        return
    widths = [max(len(row[i]) for row in [list(header), *texts]) for i in range(len(header))]
    for row in [list(header), *texts]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
