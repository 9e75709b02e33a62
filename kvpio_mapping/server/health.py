"""``GET /healthz`` and ``GET /readyz``: probes for load balancers and orchestrators, no auth.

``/healthz`` says the worker answers and touches nothing else. ``/readyz``
also takes the database's write lock and lets it go (in the worker's write
thread, so it queues behind writes like a write would), answering 503 with
``Retry-After`` if that fails or takes longer than :data:`READY_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import falcon.asgi

    from .app import Server

READY_TIMEOUT: Final = 2.0
RETRY_AFTER: Final = "1"

log = logging.getLogger("kvpio.server")


def _answer(resp: falcon.asgi.Response, status: int, body: dict[str, str]) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.set_header("Cache-Control", "no-store")
    resp.data = json.dumps(body).encode()


class HealthResource:
    """200 ``{"status": "ok"}`` whenever the worker runs."""

    prefix = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _answer(resp, 200, {"status": "ok"})

    on_head = on_get


class ReadyResource:
    """200 once the storage could take a write, else 503 with the reason."""

    prefix = None

    def __init__(self, server: Server) -> None:
        self.server = server

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            await asyncio.wait_for(self.server.write(self.server.storage.ready), READY_TIMEOUT)
        except asyncio.TimeoutError:
            reason = f"the database took more than {READY_TIMEOUT:g} s to lock for writing"
        except Exception as exc:  # any failure to write means not ready, whatever its kind
            reason = f"the database cannot take writes: {type(exc).__name__}: {exc}"
        else:
            _answer(resp, 200, {"status": "ready"})
            return
        log.warning("not ready: %s", reason)
        resp.set_header("Retry-After", RETRY_AFTER)
        _answer(resp, 503, {"status": "unavailable", "error": reason})

    on_head = on_get
