"""``create_app``: the FastAPI application, its routers, the body limit, error mapping, the scheduler thread.

Routes are thin (``services/api/routes/``, one module per resource): they validate input and call
the scheduler and the run store. The scheduler loop runs in a background thread of this process,
guarded by a Redis lock so that several API replicas never schedule twice.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis import Redis

from shared.errors import PromptFileError, SparError

from ..dashboard import router as dashboard_router
from ..scheduler import Scheduler
from .routes import health, iterations, refine, runs, workers
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not settings.api_token:
        raise RuntimeError("SPAR_API_TOKEN is not set: the API refuses to start without a token")
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=10
    )
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
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=10)

    app = FastAPI(
        title="spar",
        version="0.1.0",
        lifespan=lifespan,
        description="SPaR self-play iterations: start, monitor, cancel, resume; download pairs.",
    )
    app.state.settings, app.state.redis, app.state.scheduler = settings, redis, scheduler

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and int(length) > settings.max_body_bytes:
            return JSONResponse(
                {"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    @app.exception_handler(SparError)
    async def spar_error(_: Request, exc: SparError):
        """Every deliberate error (shared/errors.py) is its status code and its one-line message."""
        body: dict = {"detail": str(exc)}
        if isinstance(exc, PromptFileError):
            body["lines"] = [n for n, _ in exc.problems]
        return JSONResponse(body, status_code=exc.http_status)

    for module in (health, runs, iterations, workers, refine):
        app.include_router(module.router)
    app.include_router(dashboard_router)
    return app
