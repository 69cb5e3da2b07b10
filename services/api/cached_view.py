"""``CachedRunView``: answers ``GET /v1/runs/{id}`` from the cached body before FastAPI is entered.

Why a pure ASGI layer in front of the app: a dashboard polls this one route far more often than all
the others together, and once its body is cached (:class:`services.api.views.RunViewCache`) what is
left of a request is almost all framework: routing, the dependency graph (settings, bearer token,
scheduler, Redis client), a ``Request`` object, the middleware stack. Measured with py-spy under 50
polling clients that was most of the API's time per answer. This layer does only what a cached answer
needs: the path, the bearer token (constant time), the run's state and the body, both from the
one view cache. It keeps nothing of its own.

It never decides anything the route would decide differently: whatever is not a plain cache hit (a
miss, an unknown run, a wrong or missing token, another method or path, any error) goes on to the
app unchanged, which answers it exactly as before. The route stays the one source of truth; this is
only a shortcut for the answer it would have sent.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .deps import MAX_RUN_ID, token_matches
from .views import RunViewCache

log = logging.getLogger("spar.api")
PREFIX = "/v1/runs/"


class CachedRunView:
    """Serves cached run views; passes everything else on to ``app``.

    ``state`` is the FastAPI app's ``app.state`` (settings, ``run_views``, ``live_redis``), read
    per request so that a test replacing them is honoured.
    """

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        self.hits = 0  # answers served here (the route never saw them); tests and metrics read it
        state.cached_run_view = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._cached(scope)
            if body is not None:
                self.hits += 1
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            (b"content-type", b"application/json"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _cached(self, scope: Scope) -> bytes | None:
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return None
        run_id = path[len(PREFIX) :]
        if not run_id or "/" in run_id or len(run_id) > MAX_RUN_ID:
            return None
        if not self._authorised(scope):
            return None  # the route answers 401 with its usual body and header
        try:
            views: RunViewCache = self.state.run_views
            run_state = await views.state(run_id, self.state.live_redis)
            if run_state is None:
                return None  # unknown run: the route's 404
            return views.cached_body(run_id, run_state)
        except Exception as exc:  # noqa: BLE001 - a removed run, Redis down: the route answers it
            log.debug(
                "cached view: passing on", extra={"event": "api.view_passthrough", "error": str(exc)[:200]}
            )
            return None

    def _authorised(self, scope: Scope) -> bool:
        token: str = self.state.settings.api_token
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and token_matches(given, token)
        return False
