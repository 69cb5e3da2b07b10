"""How errors become answers: a bounded 422, each deliberate error's status, a JSON 503 when Redis is away.

Every answer here has a size bounded independently of the request: a 422 lists at most
:data:`MAX_ERRORS` errors (then ``errors``, the total, and ``omitted``), each input echoed as at
most 80 characters, every location part too, and any text made safe for UTF-8 (a lone surrogate in
a client's string once made the handler itself fail with a 500).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import PromptFileError, SparError

MAX_ERRORS = 20
"""Most validation errors one 422 lists; the rest are counted (``errors``, ``omitted``)."""
SHORT = 80
"""Characters of a client's input (or a location part) a 422 echoes."""
REDIS_RETRY_AFTER_S = 5
"""``Retry-After`` of the 503 answered while Redis does not answer."""


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(SparError, spar_error)
    app.add_exception_handler(RedisConnectionError, redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, redis_unavailable)


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field (the first :data:`MAX_ERRORS`); the offending input is echoed
    only as a short text (a NaN is not JSON, and a megabyte string is not worth sending back)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    shown = [_error_entry(err) for err in errors[:MAX_ERRORS]]
    body: dict[str, Any] = {"detail": shown, "errors": len(errors)}
    if len(errors) > MAX_ERRORS:
        body["omitted"] = len(errors) - MAX_ERRORS
    return JSONResponse(body, status_code=422)


def _error_entry(err: dict[str, Any]) -> dict[str, Any]:
    loc = [p if isinstance(p, int) else short(p) for p in err.get("loc", ())]
    return {
        "loc": loc,
        "field": ".".join(str(p) for p in loc[1:]) or "(body)",
        "msg": short(err.get("msg", ""), 300),
        "type": short(err.get("type", "")),
        "input": short(err.get("input")),
    }


async def spar_error(_: Request, exc: Exception) -> JSONResponse:
    """Every deliberate error (shared/errors.py) is its status code and its one-line message."""
    assert isinstance(exc, SparError)
    body: dict[str, Any] = {"detail": short(str(exc), 4000)}
    if isinstance(exc, PromptFileError):
        body["lines"] = [n for n, _ in exc.problems[:MAX_ERRORS]]
    return JSONResponse(body, status_code=exc.http_status)


async def redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """Redis is away (down, restarting, stalled): a JSON 503 a client can retry, not a text 500."""
    return JSONResponse(
        {"detail": f"the queue store (Redis) is not answering ({short(str(exc), 200)}); retry shortly"},
        status_code=503,
        headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
    )


def short(value: object, limit: int = SHORT) -> str:
    """``value`` as at most ``limit`` characters of text that is valid UTF-8 whatever it held."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:  # an integer past Python's digit limit for str()
        return "(a number too long to show)"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
