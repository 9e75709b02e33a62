"""Key paths: parse, validate and URL-encode them, and apply them to nested data.

A path is a ``str`` of ``/``-separated segments. On an object a segment is a
key (also when it looks like a number); on a list it is a 1-based position.
The functions below are the single statement of those rules: the client's
cache, the server's storages and the tests' oracle all call them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final
from urllib.parse import quote

from .errors import InvalidPathError

MAX_DEPTH: Final = 32
MAX_SEGMENT_BYTES: Final = 768
SEPARATOR: Final = "/"


class _Missing:
    """The type of :data:`MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""Returned by :func:`get_in` where a path leads to nothing."""

Path = tuple[str, ...]


def parse(key: object) -> Path:
    """Split ``key`` into its segments, raising if it is not a valid path.

    ``TypeError`` for a key that is not a ``str``; :class:`InvalidPathError`
    (a ``ValueError``) for an empty key, an empty, ``.`` or ``..`` segment,
    a NUL character, a lone surrogate, a segment over 768 UTF-8 bytes, or
    more than 32 levels.
    ``.`` and ``..`` are refused because HTTP clients normalise them away.
    """
    if not isinstance(key, str):
        raise TypeError(f"bucket keys must be str, not {type(key).__name__}")
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:
            raise InvalidPathError(f"key path {key!r} is not valid Unicode text") from None
    segments = tuple(key.split(SEPARATOR))
    check(segments, key)
    return segments


def check(segments: Path, key: str | None = None) -> None:
    """Validate already-split segments (see :func:`parse`)."""
    if not segments or segments == ("",):
        raise InvalidPathError("a key path must not be empty")
    if len(segments) > MAX_DEPTH:
        raise InvalidPathError(
            f"key path {_shown(segments, key)} is deeper than {MAX_DEPTH} levels"
        )
    for segment in segments:
        if _bad(segment):
            check_segment(segment, _shown(segments, key))


def one_segment_each(keys: Collection[str]) -> bool:
    """Whether each key is a valid path of one segment (:func:`parse` would give ``(key,)``).

    The rules of :func:`check_segment`, tested over all the keys at once (a
    batch of a million top-level keys); when False, :func:`parse` of each
    tells which and why.
    """
    if "" in keys or "." in keys or ".." in keys:
        return False
    joined = "".join(keys)
    if SEPARATOR in joined or "\x00" in joined:
        return False
    if not joined.isascii():
        try:
            joined.encode()
        except UnicodeEncodeError:
            return False
    if max(map(len, keys), default=0) * 4 <= MAX_SEGMENT_BYTES:
        return True
    return all(len(key.encode()) <= MAX_SEGMENT_BYTES for key in keys)


def _shown(segments: Path, key: str | None) -> str:
    """The path as an error message names it (made only for a message)."""
    return repr(key if key is not None else SEPARATOR.join(segments))


def _bad(segment: str) -> bool:
    """Whether :func:`check_segment` refuses ``segment`` (its tests, without a message)."""
    return (
        not segment
        or segment == "."
        or segment == ".."
        or "\x00" in segment
        or SEPARATOR in segment
        or (len(segment) * 4 > MAX_SEGMENT_BYTES and len(segment.encode()) > MAX_SEGMENT_BYTES)
    )


def check_segment(segment: str, shown: str | None = None) -> None:
    """Validate one segment (also an object key inside a written value); ``shown`` is
    the path named in the message."""
    if not _bad(segment):
        return
    where = f"key path {shown}" if shown is not None else f"segment {segment!r}"
    if not segment:
        raise InvalidPathError(f"{where} has an empty segment")
    if segment in (".", ".."):
        raise InvalidPathError(f"{where} has a {segment!r} segment")
    if "\x00" in segment:
        raise InvalidPathError(f"{where} contains a NUL character")
    if SEPARATOR in segment:
        raise InvalidPathError(f"segment {segment!r} contains a '/'")
    raise InvalidPathError(f"a segment of {where} is over {MAX_SEGMENT_BYTES} bytes")


def join(segments: Path) -> str:
    """The canonical ``str`` form of a path."""
    return SEPARATOR.join(segments)


def url_quote(segments: Path) -> str:
    """Percent-encode each segment for a URL, keeping ``/`` between them."""
    return SEPARATOR.join(quote(segment, safe="") for segment in segments)


def position(segment: str, length: int) -> int | None:
    """The 0-based index a 1-based position segment names in a list of ``length``, or None."""
    if not (segment.isascii() and segment.isdigit()):
        return None
    index = int(segment) - 1
    return index if 0 <= index < length else None


def deleted_reach(path: str) -> str:
    """The path whose value deleting ``path`` may change: removing a list item moves the
    later items up, so a last segment that may be a position reaches its parent."""
    parent, _, last = path.rpartition(SEPARATOR)
    return parent if parent and last.isascii() and last.isdigit() else path


def get_in(data: Any, segments: Path) -> Any:
    """The value at ``segments`` below ``data``, or :data:`MISSING`."""
    for segment in segments:
        if type(data) is dict:
            data = data.get(segment, MISSING)
            if data is MISSING:
                return MISSING
        elif type(data) is list:
            index = position(segment, len(data))
            if index is None:
                return MISSING
            data = data[index]
        else:
            return MISSING
    return data


def set_in(root: dict[str, Any], segments: Path, value: Any) -> None:
    """Store ``value`` at ``segments`` below the object ``root``, in place.

    Missing or scalar parents become objects. In a list a segment must be a
    position from 1 to one past the end (which appends); anything else raises
    :class:`InvalidPathError` and leaves ``root`` unchanged.
    """
    parent: Any = root
    for depth, segment in enumerate(segments):
        last = depth == len(segments) - 1
        if type(parent) is list:
            index = _list_slot(parent, segments, depth)
            if last:
                if index == len(parent):
                    parent.append(value)
                else:
                    parent[index] = value
                return
            if index == len(parent):
                parent.append({})
            elif type(parent[index]) not in (dict, list):
                parent[index] = {}
            parent = parent[index]
        else:
            if last:
                parent[segment] = value
                return
            child = parent.get(segment)
            if type(child) not in (dict, list):
                child = parent[segment] = {}
            parent = child


def _list_slot(items: list[Any], segments: Path, depth: int) -> int:
    """The 0-based index that segment ``depth`` names for a write (may be one past the end)."""
    segment = segments[depth]
    index = position(segment, len(items) + 1)
    if index is None:
        where = join(segments[:depth]) or "the root"
        raise InvalidPathError(
            f"{segment!r} is not a position in the list at {where!r}"
            f" (positions run from 1 to {len(items) + 1})"
        )
    return index


def delete_in(root: dict[str, Any], segments: Path) -> bool:
    """Remove the value at ``segments`` below ``root`` (later list items move up).

    Returns whether anything was there.
    """
    parent = get_in(root, segments[:-1])
    segment = segments[-1]
    if type(parent) is dict:
        return parent.pop(segment, MISSING) is not MISSING
    if type(parent) is list:
        index = position(segment, len(parent))
        if index is None:
            return False
        del parent[index]
        return True
    return False
