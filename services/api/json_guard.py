"""``JsonGuard``: a JSON request body's shape is checked, off the event loop, before FastAPI sees it.

Why: FastAPI parses and validates a body on the event loop, and pydantic reports one error per bad
item. A 1 MB body can hold 480,000 list items or 90,000 unknown keys: validating it built a 422 of
100 MB in 10 s while every route, ``/healthz`` included, waited. No request body spar accepts needs
more than a few dozen keys per object, a few hundred items per list or a few levels of nesting
(the largest config section has 24 fields, the longest list field 256 items), so a body beyond
:data:`LIMITS` is refused with a 422 naming the first place at fault, and what reaches pydantic is
small enough to validate in milliseconds.

The parse and the walk run in a worker thread (plain Python: the interpreter switches threads every
few milliseconds, so the loop keeps answering). A body that is not JSON at all is passed on
untouched: FastAPI answers it with its usual ``json_invalid`` 422. A string holding a lone UTF-16
surrogate (``"\\ud800"``, valid JSON escapes but not text) is refused here too: it cannot be written
back as UTF-8, which once turned the 422 that echoes it into a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import answer_json

WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
INLINE_BYTES = 16_384
"""Bodies up to this size are checked on the loop (a thread hop costs more than the check)."""


@dataclass(frozen=True)
class ShapeLimits:
    """The largest JSON a request body may be, beyond its byte size (``SPAR_MAX_BODY_BYTES``)."""

    keys_per_object: int = 64
    items_per_list: int = 1024
    depth: int = 16
    key_chars: int = 128


LIMITS = ShapeLimits()


class ShapeError(ValueError):
    """Where a body breaks :class:`ShapeLimits` (``loc`` as in a validation error) and why."""

    def __init__(self, loc: list[str | int], msg: str, kind: str):
        super().__init__(msg)
        self.loc, self.msg, self.kind = loc, msg, kind


def check_shape(value: Any, limits: ShapeLimits = LIMITS) -> None:
    """Raise :class:`ShapeError` at the first place ``value`` (parsed JSON) breaks ``limits``.

    Iterative (an explicit stack), so depth is checked before Python's recursion limit could be.
    """
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, loc = stack.pop()
        if len(loc) > limits.depth:
            raise ShapeError(loc[: limits.depth], f"nested deeper than {limits.depth} levels", "too_deep")
        if isinstance(node, str):
            _check_text(node, loc)
        elif isinstance(node, dict):
            if len(node) > limits.keys_per_object:
                raise ShapeError(
                    loc,
                    f"an object of {len(node)} keys; at most {limits.keys_per_object} (no request "
                    "body has more fields; check for generated or repeated keys)",
                    "too_many_keys",
                )
            for key, child in node.items():
                if len(key) > limits.key_chars:
                    why = f"a key of {len(key)} characters; keys are at most {limits.key_chars}"
                    raise ShapeError(loc, why, "key_too_long")
                _check_text(key, [*loc, "(key)"])
                stack.append((child, [*loc, key]))
        elif isinstance(node, list):
            if len(node) > limits.items_per_list:
                raise ShapeError(
                    loc, f"a list of {len(node)} items; at most {limits.items_per_list}", "too_many_items"
                )
            stack.extend((child, [*loc, i]) for i, child in enumerate(node))


def _check_text(text: str, loc: list[str | int]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ShapeError(
            loc,
            f"a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}) is not text; send valid Unicode",
            "invalid_text",
        ) from None


def _parse_and_check(body: bytes) -> ShapeError | None:
    """The shape error of ``body``, or None (also None when it is not JSON: FastAPI answers that)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    try:
        check_shape(value)
    except ShapeError as exc:
        return exc
    return None


class JsonGuard:
    """Reads a request body whole (already bounded by :class:`services.api.limits.BodyLimit`, which
    sits outside this layer), checks its JSON shape in a worker thread, then hands the same bytes
    on to the app -- or answers the 422 itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if len(body) <= INLINE_BYTES:  # checked in well under a millisecond: no thread hop
            problem = _parse_and_check(body) if body else None
        else:
            problem = await run_in_threadpool(_parse_and_check, body)
        if problem is not None:
            field = ".".join(str(p) for p in problem.loc) or "(body)"
            entry = {"loc": ["body", *problem.loc], "field": field, "msg": problem.msg, "type": problem.kind}
            await answer_json(send, 422, {"detail": [entry], "errors": 1})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
