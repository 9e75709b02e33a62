"""The server's log lines: level, plain or JSON lines, and the access log.

Every line goes to stderr as one line, so a log collector never has to
join lines: an exception is its type and message on the line that reports
it, and its traceback follows only at ``debug`` level. The access log
(``kvpio.access``, off unless asked for) gives per request the method, the
path, the status, the duration and the account id; never the API key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("plain", "json")
ACCESS: Final = "kvpio.access"

_FIELDS: Final = ("client", "method", "path", "status", "duration_ms", "account")


def _utc(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _exception(record: logging.LogRecord, traceback: bool, formatter: logging.Formatter) -> str:
    """The record's exception as one line, or its whole traceback when ``traceback``."""
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    if traceback:
        return formatter.formatException(record.exc_info)
    exc = record.exc_info[1]
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message``; an access record as ``key=value`` fields."""

    def __init__(self, traceback: bool) -> None:
        super().__init__()
        self.traceback = traceback

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == ACCESS:
            fields = getattr(record, "fields", {})
            message = " ".join(f"{name}={fields.get(name, '-')}" for name in _FIELDS)
        line = f"{_utc(record)} {record.levelname} {record.name}: {message}"
        exc = _exception(record, self.traceback, self)
        if exc:
            line += ("\n" if self.traceback else ": ") + exc
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message or the access fields."""

    def __init__(self, traceback: bool) -> None:
        super().__init__()
        self.traceback = traceback

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == ACCESS:
            line.update(getattr(record, "fields", {}))
        else:
            line["message"] = record.getMessage()
        exc = _exception(record, self.traceback, self)
        if exc:
            line["exception"] = exc
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, form: str, access_log: bool) -> None:
    """Send every log line of this process to stderr in ``form`` from ``level`` up."""
    if level not in LEVELS or form not in FORMATS:
        raise ValueError(f"log level {level!r} or format {form!r} unknown")
    debug = level == "debug"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(debug) if form == "json" else PlainFormatter(debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(level.upper())
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
    access = logging.getLogger(ACCESS)
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    access.propagate = True


class AccessLog:
    """Falcon middleware writing one ``kvpio.access`` line per answered request."""

    def __init__(self) -> None:
        self.log = logging.getLogger(ACCESS)

    async def process_request(self, req: Any, resp: Any) -> None:
        req.context.started = time.perf_counter()

    async def process_response(
        self, req: Any, resp: Any, resource: Any, req_succeeded: bool
    ) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        started = req.context.get("started")
        duration = 0.0 if started is None else (time.perf_counter() - started) * 1000
        fields = {
            "client": req.remote_addr,
            "method": req.method,
            "path": req.path,
            "status": resp.status_code,
            "duration_ms": round(duration, 3),
            "account": req.context.get("account") or "-",
        }
        self.log.info("%s %s %s", req.method, req.path, fields["status"], extra={"fields": fields})
