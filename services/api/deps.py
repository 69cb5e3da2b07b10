"""What routes get injected (``Annotated[..., Depends(...)]``): settings, Redis, the scheduler, auth.

Everything is read from ``app.state``, set once by :func:`services.api.main.create_app`; a test can
replace any of these with ``app.dependency_overrides[get_scheduler] = ...``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.errors import RunNotFoundError
from shared.runtime.artifacts import RunPaths

from ..scheduler import Scheduler
from .settings import Settings

_bearer = HTTPBearer(auto_error=False)
MAX_RUN_ID = 200  # names are at most 64 characters (RunConfig.name) plus a stamp


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


async def get_live_redis(request: Request) -> AsyncRedis:
    return request.app.state.live_redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
LiveRedisDep = Annotated[AsyncRedis, Depends(get_live_redis)]


def token_matches(given: str | bytes, expected: str) -> bool:
    """The one comparison of a presented bearer token with ``SPAR_API_TOKEN``, in constant time.

    Used by ``require_token`` and by the cached run view, which answers before FastAPI parses the
    header; both must accept and refuse exactly the same tokens.
    """
    presented = given.encode() if isinstance(given, str) else given
    return secrets.compare_digest(presented.strip(), expected.encode())


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every ``/v1`` route: ``Authorization: Bearer $SPAR_API_TOKEN`` (compared in constant time).

    ``async`` like the getters above: no I/O, so it never waits for a thread of the shared pool.
    """
    if not token_matches(credentials.credentials if credentials else "", settings.api_token):
        raise HTTPException(
            401,
            "missing or wrong bearer token (Authorization: Bearer $SPAR_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def run_paths(run_id: str, scheduler: SchedulerDep, settings: SettingsDep) -> RunPaths:
    """The run directory of ``run_id``: 404 when neither the scheduler nor the runs folder knows
    the run (a ``spar run`` run in the data root is read from disk: services/api/disk_runs.py), or
    when its directory (its config) is gone from the data root."""
    from .disk_runs import disk_state

    check_run_id(run_id)
    state = scheduler.state(run_id)
    if state is None:
        state = disk_state(settings.runs_root, run_id)
    return paths_from_state(run_id, state)


def check_run_id(run_id: str) -> None:
    if len(run_id) > MAX_RUN_ID:
        raise RunNotFoundError(f"no run {run_id[:40]!r}...: run ids are at most {MAX_RUN_ID} characters")


def paths_from_state(run_id: str, state: dict[str, str] | None) -> RunPaths:
    """The run directory named by the scheduler's ``state`` of ``run_id`` (read by the caller)."""
    if state is None:
        raise RunNotFoundError(f"no run {run_id!r}; list runs with GET /v1/runs")
    paths = RunPaths(Path(state["run_dir"]))
    if not paths.config.is_file():
        raise RunNotFoundError(
            f"run {run_id}: its directory {paths.root} is gone (no config.json); it cannot be shown, "
            "cancelled or resumed"
        )
    return paths


RunPathsDep = Annotated[RunPaths, Depends(run_paths)]
