"""Inference-time refinement of one response with a run's latest refiner (a job on the refiner queue)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from workers.queue import REFINE_ONE, SERIALIZER

from ..deps import RedisDep, SchedulerDep, SettingsDep, require_token, run_paths
from ..models import RefineRequest, RefineResult
from ..views import refine_view

router = APIRouter(prefix="/v1/refine", tags=["refine"], dependencies=[Depends(require_token)])

_OUTCOMES = {
    202: {"model": RefineResult, "description": "still running: poll the given URL"},
    500: {"model": RefineResult, "description": "the refinement job failed"},
}


@router.post("", response_model=RefineResult, responses=_OUTCOMES)
def refine(body: RefineRequest, settings: SettingsDep, scheduler: SchedulerDep) -> JSONResponse:
    paths = run_paths(body.run_id, scheduler)
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
    code, view = refine_view(job)
    return JSONResponse(view, status_code=code)


@router.get("/{job_id}", response_model=RefineResult, responses=_OUTCOMES)
def refine_result(job_id: str, redis: RedisDep) -> JSONResponse:
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        raise HTTPException(404, f"no refinement job {job_id!r}") from None
    code, view = refine_view(job)
    return JSONResponse(view, status_code=code)
