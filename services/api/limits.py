"""The request-body limit, enforced on the bytes actually received (a pure ASGI middleware).

Why not a check of ``Content-Length`` alone: a chunked upload carries no length, and Starlette
buffers a body whole before the route sees it, so an unauthenticated client could grow the API's
memory without bound. This middleware counts the ``http.request`` chunks as the server hands them
over and answers 413 as soon as the count passes the limit; nothing past it is ever buffered.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` inside the app: FastAPI's error handling turns it into the 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (SPAR_MAX_BODY_BYTES)")


class BodyLimit:
    """413 for a body over ``limit`` bytes, declared (Content-Length) or received (any encoding)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await answer_json(send, 400, {"detail": f"invalid Content-Length header {declared[:40]!r}"})
                return
            if int(declared) > self.limit:
                detail = f"request body over {self.limit} bytes (SPAR_MAX_BODY_BYTES)"
                await answer_json(send, 413, {"detail": detail})
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # read outside FastAPI's handlers (e.g. by another middleware)
            if started:
                raise
            await answer_json(send, 413, {"detail": str(exc.detail)})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def answer_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    """Answer from an ASGI layer outside FastAPI: ``payload`` as JSON, and the connection closed."""
    body = json.dumps(payload).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
