"""Liveness, readiness and Prometheus metrics: no token, for probes and scrapers.

``/healthz`` and ``/readyz`` are ``async`` and use no injected (threaded) dependency: they must
answer within a second whatever else the API is doing, and sync routes share one thread pool that
slow requests can fill. Readiness pings Redis through its own client (short socket timeouts) on its
own thread, and gives up after :data:`READY_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis import Redis

from ...scheduler import TICK_KEY
from ..deps import RedisDep, SchedulerDep
from ..models import Health, Readiness

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 0.8
_PINGER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spar-readyz")


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(ok=True)


def _ping_client(request: Request) -> Redis:
    state = request.app.state
    if getattr(state, "ping_redis", None) is None:
        url = state.settings.redis_url
        state.ping_redis = Redis.from_url(
            url, socket_timeout=READY_TIMEOUT_S, socket_connect_timeout=READY_TIMEOUT_S
        )
    return state.ping_redis


@router.get(
    "/readyz",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "Redis is not reachable"}},
)
async def readyz(request: Request) -> Response:
    """Ready when Redis answers and -- where this API runs a scheduler -- some scheduler (this one
    or another replica's) completed a tick within ``SPAR_SCHEDULER_STALE_S``: an API that accepts
    runs nobody moves forward is not ready (one poisoned job once stopped every tick for good while
    this still said ok)."""
    client = _ping_client(request)
    settings = request.app.state.settings
    loop = asyncio.get_running_loop()
    try:
        last_tick = await asyncio.wait_for(
            loop.run_in_executor(_PINGER, _ping_and_last_tick, client), READY_TIMEOUT_S + 0.1
        )
    except TimeoutError:
        return JSONResponse({"ok": False, "redis": "no answer to PING in time"}, status_code=503)
    except Exception as exc:
        return JSONResponse({"ok": False, "redis": str(exc)[:300]}, status_code=503)
    if settings.scheduler:
        age = None if last_tick is None else time.time() - last_tick
        if age is None or age > settings.scheduler_stale_s:
            why = "never" if age is None else f"{age:.0f} s ago"
            return JSONResponse(
                {
                    "ok": False,
                    "scheduler": f"the last completed scheduler tick was {why} "
                    f"(SPAR_SCHEDULER_STALE_S={settings.scheduler_stale_s:g}); see scheduler.* logs",
                },
                status_code=503,
            )
    return JSONResponse({"ok": True})


def _ping_and_last_tick(client: Redis) -> float | None:
    client.ping()
    raw = client.get(TICK_KEY)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(redis: RedisDep, scheduler: SchedulerDep) -> Response:
    from ...metrics import render_metrics

    body, content_type = render_metrics(redis, scheduler)
    return Response(body, media_type=content_type)
