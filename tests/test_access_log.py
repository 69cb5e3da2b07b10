"""The API's access log (services/api/access_log.py): which requests it keeps, and in what shape."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from services.api.access_log import AccessLog


def answering(status: int, fail: bool = False):
    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        if fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def call(mode: str, method: str, status: int, fail: bool = False) -> tuple[list[logging.LogRecord], list]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("spar.api.access")
    logger.addHandler(handler)
    old_level = logger.level
    # setLevel, not `logger.level =`: only setLevel clears the logger's isEnabledFor cache, which an
    # earlier test (the API answering a request) may have filled while INFO was off
    logger.setLevel(logging.INFO)
    sent: list = []

    async def send(message):  # noqa: ANN001, ANN202
        sent.append(message)

    async def receive():  # noqa: ANN202
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": method,
        "path": "/v1/runs/r1",
        "query_string": b"x=secret",
        "client": ("10.0.0.9", 5123),
    }
    try:
        asyncio.run(AccessLog(answering(status, fail), mode)(scope, receive, send))  # type: ignore[arg-type]
    except RuntimeError:
        pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return records, sent


@pytest.mark.parametrize(
    ("mode", "method", "status", "logged"),
    [
        ("writes", "GET", 200, False),  # a poll: not kept
        ("writes", "HEAD", 200, False),
        ("writes", "GET", 404, True),  # every error is
        ("writes", "GET", 401, True),
        ("writes", "POST", 201, True),  # every write is
        ("writes", "DELETE", 204, True),
        ("all", "GET", 200, True),
        ("all", "POST", 201, True),
        ("off", "POST", 500, False),
        ("off", "GET", 404, False),
    ],
)
def test_which_requests_are_logged(mode: str, method: str, status: int, logged: bool) -> None:
    records, sent = call(mode, method, status)
    assert sent[0]["status"] == status and sent[1]["body"] == b"{}"  # the answer passes unchanged
    assert len(records) == int(logged)
    if logged:
        r = records[0]
        assert (r.method, r.path, r.status, r.client, r.event) == (
            method,
            "/v1/runs/r1",
            status,
            "10.0.0.9:5123",
            "api.request",
        )
        assert r.ms >= 0 and "secret" not in r.getMessage()


def test_an_app_that_raises_is_logged_as_a_500_and_the_error_goes_on() -> None:
    records, sent = call("writes", "GET", 200, fail=True)
    assert sent == [] and [r.status for r in records] == [500]


def test_the_api_logs_json_lines_with_the_fields() -> None:
    """Through create_app and spar's JSON logging: a refused request is one JSON line; a poll of
    /healthz that succeeds writes nothing."""
    from fastapi.testclient import TestClient
    from service_harness import TOKEN

    from services import logs
    from services.api import Settings, create_app

    stream = io.StringIO()
    logs.configure(None, json_stderr=True)
    spar = logging.getLogger("spar")
    try:
        for handler in spar.handlers:
            handler.stream = stream  # type: ignore[attr-defined]
        client = TestClient(create_app(Settings(api_token=TOKEN, scheduler=False)))
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/runs/whatever").status_code == 401
    finally:
        for handler in list(spar.handlers):
            spar.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "spar.api.access"]
    assert len(access) == 1
    assert (
        access[0]["method"] == "GET"
        and access[0]["path"] == "/v1/runs/whatever"
        and access[0]["status"] == 401
    )


def test_the_setting_is_checked() -> None:
    from shared.runtime.settings import SparSettings

    assert SparSettings().access_log == "writes"
    with pytest.raises(ValueError, match="access_log"):
        SparSettings(access_log="verbose")
