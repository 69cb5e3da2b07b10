"""``AccessLog``: one structured (JSON) line per request worth keeping, instead of uvicorn's text lines.

uvicorn's own access log is plain text (not the JSON every other spar log line is) and writes a
line for every request. On an API that dashboards poll, nearly all of those lines are
``GET /v1/runs/{id} 200``: measured with py-spy under 50 polling clients, formatting and writing
them was 18% of the API process's time, for lines nobody reads. ``SPAR_ACCESS_LOG`` chooses:

- ``writes`` (the default): every request that may change something (any method but GET, HEAD and
  OPTIONS) and every answer of 400 or more. Successful reads are not logged;
- ``all``: every request;
- ``off``: none.

Each line carries ``method``, ``path`` (no query string: it may hold ids a log should not keep),
``status``, ``ms`` and ``client`` as fields of the JSON object (logger ``spar.api.access``).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("spar.api.access")
AccessLogMode = Literal["writes", "all", "off"]
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class AccessLog:
    """Logs requests as ``mode`` says (see the module docstring); never changes a request or answer."""

    def __init__(self, app: ASGIApp, mode: AccessLogMode = "writes") -> None:
        self.app = app
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.mode == "off":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        except Exception:
            status = status or 500  # what the server answers when the app raised before starting
            raise  # (a client that went away cancels the request: status 0, "no answer")
        finally:
            if self.mode == "all" or status >= 400 or scope["method"] not in READS:
                client = scope.get("client")
                log.info(
                    "%s %s %s",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "event": "api.request",
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                    },
                )
