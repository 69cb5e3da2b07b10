"""Runs: create, list, show, cancel, resume, and the run's report (HTML or Markdown)."""

from __future__ import annotations

import logging
import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.config import RunConfig
from shared.errors import RunConflictError
from shared.runtime.artifacts import RunPaths
from shared.runtime.data_inputs import check_inputs as check_data_inputs

from ...dashboard import report_csp
from ...report import load_run, render_markdown
from ...report_html import render_html
from ...run_owner import is_alive, read_owner
from ...runs import confine, create_run
from ...scheduler import RunStatus, Scheduler
from ..deps import MAX_RUN_ID, LiveRedisDep, RunPathsDep, SchedulerDep, SettingsDep, require_token
from ..disk_runs import disk_run_ids, disk_state
from ..models import RunCreated, RunListItem, RunStatusChange, RunView
from ..settings import Settings
from ..views import RunViewCache

log = logging.getLogger("spar.api")
RESUMABLE = (RunStatus.FAILED, RunStatus.CANCELLED)
RESUME_LOCK_S = 60  # longer than any resume takes; the lock is deleted as soon as it is done

router = APIRouter(prefix="/v1/runs", tags=["runs"], dependencies=[Depends(require_token)])


@router.post("", status_code=201, response_model=RunCreated)
def start_run(config: RunConfig, settings: SettingsDep, scheduler: SchedulerDep) -> RunCreated:
    """Create a run from a config (the YAML's fields as JSON); paths must lie under the data root."""
    resolved = confine(
        config,
        settings.data_root.resolve(),
        allow_remote_code=settings.allow_remote_code,
        allow_hub_push=settings.allow_hub_push,
        max_iterations=settings.max_iterations,
    )
    paths = create_run(resolved, settings.runs_root)
    try:
        scheduler.register(paths)
    except BaseException:  # Redis away (a 503): a retried request must not leave a folder per try
        shutil.rmtree(paths.root, ignore_errors=True)
        raise
    return RunCreated(id=paths.run_id, status=RunStatus.QUEUED, run_dir=str(paths.root))


@router.get("", response_model=list[RunListItem])
def list_runs(scheduler: SchedulerDep, settings: SettingsDep) -> list[dict]:
    """The service's runs (Redis), then the runs found in the runs folder that Redis does not know
    (made by ``spar run``; ``source: "disk"``, read-only until resumed), newest first."""
    known = scheduler.run_ids()  # Redis away: the handlers' JSON 503, before any folder is read
    runs = [{"id": r, "source": "service", **(scheduler.state(r) or {})} for r in known]
    for run_id in disk_run_ids(settings.runs_root, set(known)):
        state = disk_state(settings.runs_root, run_id)
        if state is not None:
            runs.append({"id": run_id, **state})
    return runs


@router.get("/{run_id}", response_model=RunView)
async def get_run(run_id: str, request: Request, live_redis: LiveRedisDep) -> Response:
    """The run's status, progress and per-iteration numbers (what a dashboard polls).

    Built only when something changed, and then once, however many clients poll
    (:class:`services.api.views.RunViewCache`): the scheduler's state is read from Redis at most
    every ``view_state_ttl`` seconds; while it and the run's files are unchanged the body is the
    kept bytes (checked against ``RunView`` when built); a new state alone is put into the kept
    disk part inline; a change of the run's files is read ONCE in a worker thread while every poll
    meanwhile waits for it. A finished shard or a new status shows in the very next answer.
    """
    views: RunViewCache = request.app.state.run_views
    state = await views.state(run_id, live_redis)
    if state is None and len(run_id) <= MAX_RUN_ID:  # a `spar run` run in the data root
        state = await run_in_threadpool(disk_state, request.app.state.settings.runs_root, run_id)
    return Response(await views.body(run_id, state), media_type="application/json")


@router.post(
    "/{run_id}/cancel",
    response_model=RunStatusChange,
    responses={409: {"description": "the run has finished: succeeded or failed (a cancelled one: 200)"}},
)
def cancel(run_id: str, paths: RunPathsDep, scheduler: SchedulerDep) -> RunStatusChange:
    """Marks the run cancelled first, then stops its jobs. A run whose config.json no longer reads
    (written by a laxer version, or damaged) is still cancelled: the scheduler could never have
    enqueued its jobs, so there is nothing to stop."""
    if scheduler.state(run_id) is None:
        raise HTTPException(
            409, f"run {run_id} was made by `spar run` and is read-only here; stop it where it runs"
        )
    try:
        cancelled = scheduler.cancel(run_id, paths)
    except (OSError, ValueError) as exc:
        log.warning(
            "cancel: config unreadable",
            extra={"event": "run.cancel_unreadable", "run": run_id, "error": str(exc)[:200]},
        )
        cancelled = True  # marked cancelled before its jobs were looked for
    status = None if cancelled else (scheduler.state(run_id) or {}).get("status", "gone")
    if status is not None and status != RunStatus.CANCELLED:  # cancelling twice is harmless
        raise HTTPException(409, f"run {run_id} is {status}; only queued or running runs can be cancelled")
    return RunStatusChange(id=run_id, status=RunStatus.CANCELLED)


@router.post(
    "/{run_id}/resume",
    response_model=RunStatusChange,
    responses={409: {"description": "the run is queued, running or succeeded, or being resumed right now"}},
)
def resume(
    run_id: str, paths: RunPathsDep, scheduler: SchedulerDep, settings: SettingsDep
) -> RunStatusChange:
    """Only one resume of a run at a time (a short Redis lock, across API replicas): a second one
    sent meanwhile gets 409, not a half-done duplicate. A run found on disk (made by ``spar run``)
    is handed to the scheduler here, once its config passes the rules a new run's must."""
    if scheduler.state(run_id) is None:
        return _adopt(run_id, paths, scheduler, settings)
    lock = f"spar:run:{run_id}:resuming"
    if not scheduler.redis.set(lock, "1", nx=True, ex=RESUME_LOCK_S):
        raise HTTPException(409, f"run {run_id} is being resumed by another request; check its status")
    try:
        state = scheduler.state(run_id) or {}
        if state.get("status") not in RESUMABLE:
            raise HTTPException(
                409, f"run {run_id} is {state.get('status')}; only failed or cancelled runs resume"
            )
        try:
            check_data_inputs(paths)  # 409 naming the data file edited since the run was created
            scheduler.resume(run_id, paths)
        except (OSError, ValueError) as exc:
            raise RunConflictError(
                f"run {run_id}: its config.json cannot be read ({str(exc)[:200]}); start a new run"
            ) from exc
    finally:
        scheduler.redis.delete(lock)
    return RunStatusChange(id=run_id, status=RunStatus.QUEUED)


def _adopt(run_id: str, paths: RunPaths, scheduler: Scheduler, settings: Settings) -> RunStatusChange:
    """A disk run joins the service: its paths must lie in the data root (400 naming the field),
    then it is registered as queued and the scheduler runs what is not done yet."""
    from shared.runtime.shards import load_config

    config = load_config(paths)
    confine(
        config,
        settings.data_root.resolve(),
        allow_remote_code=settings.allow_remote_code,
        allow_hub_push=settings.allow_hub_push,
        max_iterations=settings.max_iterations,
    )
    check_data_inputs(paths)
    busy = read_owner(paths)
    if busy is not None and is_alive(*busy):  # `spar run` works on it now: two would duplicate every stage
        raise RunConflictError(
            f"run {run_id} is being run by `spar run` (pid {busy[0].pid} on {busy[0].host}); "
            "resume it here once that process has stopped"
        )
    if not scheduler.redis.set(f"spar:run:{run_id}:resuming", "1", nx=True, ex=RESUME_LOCK_S):
        raise HTTPException(409, f"run {run_id} is being resumed by another request; check its status")
    try:
        if scheduler.state(run_id) is None:
            scheduler.register(paths)
    finally:
        scheduler.redis.delete(f"spar:run:{run_id}:resuming")
    return RunStatusChange(id=run_id, status=RunStatus.QUEUED)


@router.get(
    "/{run_id}/report",
    response_class=HTMLResponse,
    responses={
        200: {
            "content": {"text/html": {}, "text/markdown": {}},
            "description": "the run's report (`spar report`): an HTML page or Markdown",
        },
        409: {"description": "the run's config or manifests cannot be read"},
    },
)
def get_report(
    run_id: str,
    paths: RunPathsDep,
    fmt: Annotated[Literal["html", "md"], Query(alias="format", description="html (default) or md")] = "html",
) -> Response:
    """The report ``spar report`` writes, built now from the run directory (a running run shows
    what is done). Served with a CSP of its own (:func:`services.dashboard.report_csp`): the page's
    one style and its one script (the chart code) by hash, no other script and no request at all,
    so text from the run (prompts, configs) can never turn into code or a request."""
    try:
        report = load_run(paths.root)
    except (OSError, ValueError) as exc:  # removed meanwhile, or written by an older, laxer version
        raise RunConflictError(f"run {run_id}: its report cannot be built ({str(exc)[:200]})") from exc
    headers = {
        "Content-Security-Policy": report_csp(),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    if fmt == "md":
        return Response(render_markdown([report]), media_type="text/markdown; charset=utf-8", headers=headers)
    return HTMLResponse(render_html([report]), headers=headers)
