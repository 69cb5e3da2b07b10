"""Liveness, readiness and Prometheus metrics: no token, for probes and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..deps import RedisDep, SchedulerDep
from ..models import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(ok=True)


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "Redis is not reachable"}},
)
def readyz(redis: RedisDep) -> Response:
    try:
        redis.ping()
    except Exception as exc:
        return JSONResponse({"ok": False, "redis": str(exc)}, status_code=503)
    return JSONResponse({"ok": True})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(redis: RedisDep, scheduler: SchedulerDep) -> Response:
    from ...metrics import render_metrics

    body, content_type = render_metrics(redis, scheduler)
    return Response(body, media_type=content_type)
