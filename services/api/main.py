"""``create_app``: the FastAPI application, its routers, the body limit, error mapping, the scheduler thread.

Routes are thin (``services/api/routes/``, one module per resource): they validate input and call
the scheduler and the run store. The scheduler loop runs in a background thread of this process,
guarded by a Redis lock so that several API replicas never schedule twice.
"""

from __future__ import annotations

import gc
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.errors import WorkerSettingsError
from shared.runtime.settings import MIN_TOKEN_LENGTH

from ..dashboard import router as dashboard_router
from ..scheduler import Scheduler
from .access_log import AccessLog
from .cached_view import CachedRunView
from .docs import add_docs
from .errors import add_error_handlers
from .json_guard import JsonGuard
from .limits import BodyLimit
from .routes import health, iterations, refine, runs, workers
from .settings import Settings
from .views import RunViewCache


def check_token(settings: Settings) -> None:
    """The API refuses to start without a token of at least ``MIN_TOKEN_LENGTH`` characters: a short
    one can be guessed, and it guards every route that starts work or reads run data."""
    if not settings.api_token:
        raise WorkerSettingsError("SPAR_API_TOKEN is not set: the API refuses to start without a token")
    if len(settings.api_token) < MIN_TOKEN_LENGTH:
        raise WorkerSettingsError(
            f"SPAR_API_TOKEN is {len(settings.api_token)} characters; the API needs at least "
            f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 32`)"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_token(settings)
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )
    # the run view's one Redis read per request is awaited on the event loop (no worker thread, and
    # a stalled Redis holds that request only, never the loop: health probes keep answering)
    live_redis = AsyncRedis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    scheduler = Scheduler(redis, settings.scheduler_settings())
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        thread = None
        if settings.scheduler:
            thread = threading.Thread(
                target=scheduler.serve,
                args=(stop, settings.scheduler_interval),
                daemon=True,
                name="spar-scheduler",
            )
            thread.start()
        # Everything imported and built so far lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (a pause of tens of ms under load otherwise)
        gc.collect()
        gc.freeze()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        await live_redis.aclose()

    app = FastAPI(
        title="spar",
        version="0.1.0",
        lifespan=lifespan,
        description="SPaR self-play iterations: start, monitor, cancel, resume; download pairs.",
        docs_url=None,  # served from the installed swagger-ui-bundle by add_docs, never from a CDN
        redoc_url=None,  # no offline ReDoc bundle: /openapi.json is the contract
    )
    app.state.settings, app.state.redis, app.state.scheduler = settings, redis, scheduler
    app.state.live_redis = live_redis
    app.state.run_views = RunViewCache(settings.view_state_ttl)
    scheduler.on_change = app.state.run_views.forget_state

    # innermost first: a body's JSON shape is checked (in a thread) before FastAPI parses it; a
    # cached run view is answered inside the body limit, before FastAPI's routing
    app.add_middleware(JsonGuard)
    app.add_middleware(CachedRunView, state=app.state)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AccessLog, mode=settings.access_log)  # outermost: sees every answer, 413s too

    add_error_handlers(app)

    for module in (health, runs, iterations, workers, refine):
        app.include_router(module.router)
    app.include_router(dashboard_router)
    add_docs(app)
    return app
