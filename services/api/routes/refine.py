"""Inference-time refinement of one response with a run's latest refiner (a job on the refiner queue).

``POST /v1/refine`` waits for the result up to ``wait_s`` seconds without holding a thread: it is
``async`` and polls the job with ``asyncio.sleep`` between short Redis reads, so any number of
waiting clients cannot starve the thread pool (or the health probes). ``GET /v1/refine/{id}``
shows refinement jobs only; any other job id (a shard's, say) is a 404.

The refinement is judged by the run's own ``judge.backend``, as its stages are. A ``verifier`` run
has no LLM judge to fall back to: a request without ``metadata`` (the prompt's constraints) is a 422
naming ``metadata``, answered here before anything is queued.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from shared.errors import RunConflictError
from shared.runtime.queue import REFINE_ONE, SERIALIZER

from ..deps import RedisDep, SchedulerDep, SettingsDep, require_token, run_paths
from ..models import RefineRequest, RefineResult
from ..views import refine_view

if TYPE_CHECKING:
    from shared.runtime.artifacts import RunPaths

router = APIRouter(prefix="/v1/refine", tags=["refine"], dependencies=[Depends(require_token)])

POLL_S = 0.2
RESULT_TTL_S = 24 * 3600
"""A refinement's result, or its failure, is kept this long; then RQ deletes the job."""
RATE_KEY = "spar:refine:rate"
_OUTCOMES = {
    202: {"model": RefineResult, "description": "still running: poll the given URL"},
    500: {"model": RefineResult, "description": "the refinement job failed"},
    429: {"description": "over SPAR_REFINE_PER_MINUTE refinements this minute; see Retry-After"},
}
JobId = Annotated[str, Path(max_length=100, description="The job id POST /v1/refine returned.")]


@router.post("", response_model=RefineResult, responses=_OUTCOMES)
async def refine(body: RefineRequest, settings: SettingsDep, scheduler: SchedulerDep) -> JSONResponse:
    paths = await run_in_threadpool(run_paths, body.run_id, scheduler, settings)
    if await run_in_threadpool(scheduler.state, body.run_id) is None:  # a `spar run` run, read-only
        raise HTTPException(
            409,
            f"run {body.run_id} was made by `spar run`; POST /v1/runs/{body.run_id}/resume hands it "
            "to the service first",
        )
    metadata = None if body.metadata is None else body.metadata.model_dump()
    await run_in_threadpool(_judgeable, paths, metadata)
    await run_in_threadpool(_within_rate, scheduler.redis, settings.refine_per_minute)
    kwargs: dict[str, object] = {"run_dir": str(paths.root), "prompt": body.prompt, "response": body.response}
    if metadata is not None:  # only when given: a job without it stays what older workers accept
        kwargs["metadata"] = metadata
    job = await run_in_threadpool(
        scheduler.queues["refiner"].enqueue,
        REFINE_ONE,
        kwargs=kwargs,
        job_timeout=settings.job_timeout,
        ttl=RESULT_TTL_S,  # not started in a day: dropped from the queue
        result_ttl=RESULT_TTL_S,
        failure_ttl=RESULT_TTL_S,  # RQ's default keeps a failed job (and its payload) for a year
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_s
    while loop.time() < deadline:
        status = await run_in_threadpool(job.get_status, True)
        if status in (JobStatus.FINISHED, JobStatus.FAILED):
            break
        await asyncio.sleep(POLL_S)
    code, view = await run_in_threadpool(refine_view, job)
    return JSONResponse(view, status_code=code)


def _judgeable(paths: RunPaths, metadata: dict[str, Any] | None) -> None:
    """422 naming ``metadata`` when the run's judge cannot judge this prompt without it (``verifier``)."""
    from shared.judges import backend_of
    from shared.runtime.shards import load_config

    try:
        config = load_config(paths)
    except (OSError, ValueError) as exc:  # removed meanwhile, or written by an older, laxer version
        reason = str(exc)[:200]
        raise RunConflictError(f"run {paths.root.name}: its config.json cannot be read ({reason})") from exc
    problem = backend_of(config.judge).missing_metadata(metadata)
    if problem is not None:
        raise RequestValidationError(
            [{"loc": ("body", "metadata"), "msg": problem, "type": "missing", "input": metadata}]
        )


def _within_rate(redis: Redis, per_minute: int) -> None:
    """429 past ``per_minute`` refinements in this minute (one counter in Redis for every replica)."""
    window = int(time.time() // 60)
    key = f"{RATE_KEY}:{window}"
    with redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
    if int(count) > per_minute:
        retry_after = max(1, int((window + 1) * 60 - time.time()) + 1)
        raise HTTPException(
            429,
            f"over {per_minute} refinements this minute (SPAR_REFINE_PER_MINUTE); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def _refine_job(job_id: str, redis: RedisDep) -> Job:
    """The refinement job ``job_id``; 404 for an unknown id and for any job that is not a refinement."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
        is_refine = job.func_name == REFINE_ONE
    except (NoSuchJobError, ValueError, TypeError):  # unknown, or stored data that is not a job
        is_refine = False
    if not is_refine:
        raise HTTPException(404, f"no refinement job {job_id!r}; ids come from POST /v1/refine")
    return job


@router.get("/{job_id}", response_model=RefineResult, responses=_OUTCOMES)
def refine_result(job_id: JobId, redis: RedisDep) -> JSONResponse:
    code, view = refine_view(_refine_job(job_id, redis))
    return JSONResponse(view, status_code=code)
