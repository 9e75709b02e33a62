"""The wire form of conditional and atomic writes (docs/protocol.md, "Safe sharing").

Turns headers and commit bodies into storage :class:`~.storage.base.Check` and
:class:`~.storage.base.Operation` values, and commit outcomes into bodies.
Nothing here touches storage or HTTP objects, so it is tested on its own.
"""

from __future__ import annotations

from typing import Any, Final

from .. import paths, values
from .storage.base import (
    MAX_COMMIT,
    Check,
    CheckFailedError,
    Committed,
    Operation,
    OperationKind,
)

WIRE_OPERATIONS: Final = frozenset({"set", "delete", "increment", "append", "merge"})
"""Operations a commit body may name (``pop`` is the storage's, for ``?pop=true``)."""

PATH_OPERATIONS: Final[dict[str, OperationKind]] = {
    "increment": "increment",
    "append": "append",
    "merge": "merge",
}
"""Values of ``?op=`` on ``POST /v1/bucket/{path}``."""


class WireError(ValueError):
    """A commit body or a condition that does not follow the protocol (a 400)."""


def conditions(path: paths.Path, if_match: str | None, if_none_match: str | None) -> list[Check]:
    """The checks a write to ``path`` carries in ``If-Match`` / ``If-None-Match: *``.

    ``If-Match`` names one ETag, or ``*`` (a value must be there). Other
    ``If-None-Match`` values are ignored, as they always were on writes.
    """
    checks = []
    if if_match is not None:
        tag = if_match.strip()
        if not tag or "," in tag:
            raise WireError("If-Match must name one ETag, or *")
        checks.append(Check(path, tag))
    if if_none_match is not None and if_none_match.strip() == "*":
        checks.append(Check(path, None))
    return checks


def path_operation(name: str | None) -> OperationKind:
    """The operation ``?op=`` names on a write to a path (a plain write without one)."""
    if name is None:
        return "set"
    if name not in PATH_OPERATIONS:
        raise WireError(f"op must be one of {', '.join(PATH_OPERATIONS)}, not {name!r}")
    return PATH_OPERATIONS[name]


def parse_commit(body: Any) -> tuple[list[Operation], list[Check]]:
    """The operations and checks of a commit body (see docs/protocol.md)."""
    if type(body) is not dict or not set(body) <= {"operations", "checks"}:
        raise WireError('a commit is a JSON object with "operations" and "checks" lists')
    operations = body.get("operations", [])
    checks = body.get("checks", [])
    if type(operations) is not list or type(checks) is not list:
        raise WireError('"operations" and "checks" must be lists')
    if len(operations) > MAX_COMMIT or len(checks) > MAX_COMMIT:
        raise WireError(f"a commit holds at most {MAX_COMMIT} operations and {MAX_COMMIT} checks")
    return [_operation(item) for item in operations], [_check(item) for item in checks]


def _operation(item: Any) -> Operation:
    if type(item) is not dict or not {"op", "path"} <= set(item) <= {"op", "path", "value"}:
        raise WireError('an operation is an object with "op", "path" and, but for delete, "value"')
    kind = item["op"]
    if kind not in WIRE_OPERATIONS:
        raise WireError(f"unknown operation {kind!r}; one of {', '.join(sorted(WIRE_OPERATIONS))}")
    if ("value" in item) == (kind == "delete"):
        raise WireError(f"a {kind} operation {'takes no' if kind == 'delete' else 'needs a'} value")
    return Operation(kind, _path(item["path"]), item.get("value"))


def _check(item: Any) -> Check:
    if type(item) is not dict or set(item) != {"path", "etag"}:
        raise WireError('a check is an object with "path" and "etag" (an ETag, "*" or null)')
    tag = item["etag"]
    if tag is not None and type(tag) is not str:
        raise WireError('a check\'s "etag" is an ETag, "*" or null')
    return Check(_path(item["path"]), tag)


def _path(path: Any) -> paths.Path:
    if type(path) is not str:
        raise WireError("a path in a commit must be a string")
    return paths.parse(path)


def committed_body(committed: Committed) -> bytes:
    """``{"revision": n, "results": [...]}``: each result is already JSON text."""
    results = ",".join("null" if text is None else text for text in committed.results)
    return f'{{"revision":{committed.revision},"results":[{results}]}}'.encode()


def failed_body(error: CheckFailedError) -> bytes:
    """The 412 body of a commit: which checks failed, with each path's value and ETag now."""
    failed = []
    for failure in error.failures:
        entry = values.dump(
            {"check": failure.check, "path": paths.join(failure.path), "etag": failure.etag}
        )
        if failure.text is not None:
            entry = entry[:-1] + ',"value":' + failure.text + "}"
        failed.append(entry)
    return f'{{"error":{values.dump(str(error))},"failed":[{",".join(failed)}]}}'.encode()
