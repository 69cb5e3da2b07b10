"""The REST API: start, watch, cancel and resume runs; download pairs; refine one response.

Routes are thin: they validate input (pydantic models, the data root), then call the scheduler and
read the artifact store. The scheduler loop runs in a background thread of this process, guarded by
a Redis lock so that several API replicas never schedule twice.
"""

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from shared.config import RunConfig
from shared.prompts import PromptFileError
from workers.artifacts import RunPaths
from workers.queue import REFINE_ONE, SERIALIZER, worker_key
from workers.stages import num_shards

from .runs import ConfigError, create_run, resolve_paths
from .scheduler import Scheduler, SchedulerSettings, pipeline
from .summary import iteration_summary


class Settings(BaseSettings):
    """Everything comes from the environment (``SPAR_*``), as in the compose file and the manifests."""

    model_config = SettingsConfigDict(env_prefix="SPAR_", extra="ignore")

    api_token: str = Field("", description="Bearer token required on every route but health.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_root: Path = Path("data")
    runs_dir: Path | None = None
    max_body_bytes: int = 1_000_000
    scheduler: bool = True
    scheduler_interval: float = 1.0
    job_timeout: int = 6 * 3600
    train_timeout: int = 24 * 3600
    retries: int = 3
    retry_intervals: str = "5,30,120"

    @property
    def runs_root(self) -> Path:
        return (self.runs_dir or self.data_root / "runs").resolve()

    def scheduler_settings(self) -> SchedulerSettings:
        return SchedulerSettings(
            job_timeout=self.job_timeout,
            train_timeout=self.train_timeout,
            retries=self.retries,
            retry_intervals=tuple(int(x) for x in self.retry_intervals.split(",") if x.strip()),
        )


class RunCreated(BaseModel):
    id: str
    status: str
    run_dir: str


class RefineRequest(BaseModel):
    run_id: str
    prompt: str = Field(..., min_length=1)
    response: str
    wait_s: float = Field(
        30.0, ge=0.0, le=600.0, description="Wait this long for the result, then return a job id."
    )


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
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), settings.api_token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token (Authorization: Bearer $SPAR_API_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(authorized)]

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and int(length) > settings.max_body_bytes:
            return JSONResponse(
                {"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(PromptFileError)
    async def prompt_error(_: Request, exc: PromptFileError):
        return JSONResponse({"detail": str(exc), "lines": [n for n, _ in exc.problems]}, status_code=400)

    def paths_of(run_id: str) -> RunPaths:
        state = scheduler.state(run_id)
        if state is None:
            raise HTTPException(404, f"no run {run_id!r}; list runs with GET /v1/runs")
        return RunPaths(Path(state["run_dir"]))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            redis.ping()
        except Exception as exc:
            return JSONResponse({"ok": False, "redis": str(exc)}, status_code=503)
        return JSONResponse({"ok": True})

    @app.post("/v1/runs", status_code=201, dependencies=auth, response_model=RunCreated)
    def start_run(config: RunConfig) -> RunCreated:
        resolved = confine(config, settings.data_root.resolve())
        paths = create_run(resolved, settings.runs_root)
        scheduler.register(paths)
        return RunCreated(id=paths.run_id, status="queued", run_dir=str(paths.root))

    @app.get("/v1/runs", dependencies=auth)
    def list_runs() -> list[dict]:
        return [{"id": r, **(scheduler.state(r) or {})} for r in scheduler.run_ids()]

    @app.get("/v1/runs/{run_id}", dependencies=auth)
    def get_run(run_id: str) -> dict:
        return run_view(run_id, paths_of(run_id), scheduler)

    @app.get("/v1/runs/{run_id}/iterations/{iteration}", dependencies=auth)
    def get_iteration(run_id: str, iteration: int) -> dict:
        paths = paths_of(run_id)
        if not (paths.root / f"iter_{iteration}").exists():
            raise HTTPException(404, f"run {run_id} has no iteration {iteration} yet")
        return iteration_summary(paths, iteration) | {"progress": stage_progress(paths, only=iteration)}

    @app.get("/v1/runs/{run_id}/iterations/{iteration}/pairs", dependencies=auth)
    def download_pairs(run_id: str, iteration: int) -> StreamingResponse:
        file = paths_of(run_id).data_file(iteration, "pairs.jsonl")
        if not file.exists():
            raise HTTPException(
                404, f"iteration {iteration} of {run_id} has no pairs yet (assemble not done)"
            )

        def lines() -> Iterator[bytes]:
            with file.open("rb") as f:
                yield from f

        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{run_id}-{iteration}-pairs.jsonl"'},
        )

    @app.post("/v1/runs/{run_id}/cancel", dependencies=auth)
    def cancel(run_id: str) -> dict:
        scheduler.cancel(run_id, paths_of(run_id))
        return {"id": run_id, "status": "cancelled"}

    @app.post("/v1/runs/{run_id}/resume", dependencies=auth)
    def resume(run_id: str) -> dict:
        state = scheduler.state(run_id) or {}
        if state.get("status") in ("queued", "running"):
            raise HTTPException(
                409, f"run {run_id} is {state['status']}; only failed or cancelled runs resume"
            )
        scheduler.resume(run_id, paths_of(run_id))
        return {"id": run_id, "status": "queued"}

    @app.get("/v1/workers", dependencies=auth)
    def list_workers() -> list[dict]:
        out = []
        for key in redis.scan_iter(match=worker_key("*")):
            fields = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
            out.append({"name": key.decode().split(":", 2)[2], **fields})
        return sorted(out, key=lambda w: w["name"])

    @app.post("/v1/refine", dependencies=auth)
    def refine(body: RefineRequest) -> JSONResponse:
        paths = paths_of(body.run_id)
        job = scheduler.queues["refiner"].enqueue(
            REFINE_ONE,
            kwargs={"run_dir": str(paths.root), "prompt": body.prompt, "response": body.response},
            job_timeout=settings.job_timeout,
            result_ttl=24 * 3600,
        )
        deadline = time.monotonic() + body.wait_s
        while time.monotonic() < deadline:
            status = job.get_status(refresh=True)
            if status in (JobStatus.FINISHED, JobStatus.FAILED):
                break
            time.sleep(0.2)
        return refine_view(job)

    @app.get("/v1/refine/{job_id}", dependencies=auth)
    def refine_result(job_id: str) -> JSONResponse:
        try:
            job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
        except NoSuchJobError:
            raise HTTPException(404, f"no refinement job {job_id!r}") from None
        return refine_view(job)

    @app.get("/metrics")
    def metrics() -> Response:
        from .metrics import render_metrics

        body, content_type = render_metrics(redis, scheduler)
        return Response(body, media_type=content_type)

    from .dashboard import add_dashboard

    add_dashboard(app)
    return app


def confine(config: RunConfig, root: Path) -> RunConfig:
    """Resolve the config's paths against the data root; anything outside it is refused (400)."""
    resolved = resolve_paths(config, root)
    paths = {"prompts": resolved.prompts}
    for role in ("actor", "refiner"):
        model = getattr(resolved, role).model
        if model != getattr(config, role).model:  # a path, not a built-in name
            paths[f"{role}.model"] = model
    if resolved.init is not None:
        paths |= {
            f"init.{k}": getattr(resolved.init, k)
            for k in ("actor_data", "refiner_data")
            if getattr(resolved.init, k) is not None
        }
    for field, value in paths.items():
        if not Path(value).resolve().is_relative_to(root):
            raise ConfigError(f"{field}: {value} is outside the data root {root}; put the file under it")
    return resolved


def stage_progress(paths: RunPaths, only: int | None = None) -> list[dict]:
    out = []
    for iteration, stage in pipeline(paths):
        if only is not None and iteration != only:
            continue
        total = num_shards(paths, stage) if (paths.root / "prompts").exists() else 0
        done = sum(paths.shard_done(iteration, stage, k).exists() for k in range(total))
        out.append(
            {
                "iteration": iteration,
                "stage": stage,
                "done": done,
                "total": total,
                "complete": paths.manifest(iteration, stage).exists(),
            }
        )
    return out


def run_view(run_id: str, paths: RunPaths, scheduler: Scheduler) -> dict[str, Any]:
    from workers.jobs import latest_version
    from workers.stages.common import load_config

    state = scheduler.state(run_id) or {}
    config = load_config(paths)
    iterations = [
        iteration_summary(paths, t) for t in range(config.iterations) if (paths.root / f"iter_{t}").exists()
    ]
    return {
        "id": run_id,
        "status": state.get("status"),
        "error": state.get("error") or None,
        "iteration": int(state.get("iteration") or 0),
        "stage": state.get("stage") or None,
        "progress": stage_progress(paths),
        "iterations": iterations,
        "models": {role: f"v{latest_version(paths, role)}" for role in ("actor", "refiner")},
        "created_at": float(state.get("created_at") or 0),
        "updated_at": float(state.get("updated_at") or 0),
        "run_dir": str(paths.root),
    }


def refine_view(job: Job) -> JSONResponse:
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return JSONResponse({"job_id": job.id, "status": "finished", "result": job.return_value()})
    if status == JobStatus.FAILED:
        return JSONResponse(
            {"job_id": job.id, "status": "failed", "error": str(job.exc_info or "")[-500:]}, status_code=500
        )
    return JSONResponse(
        {"job_id": job.id, "status": str(status), "poll": f"/v1/refine/{job.id}"}, status_code=202
    )
