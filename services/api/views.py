"""Read models of runs, built from the scheduler's state and the run directory (no HTTP here)."""

from __future__ import annotations

from typing import Any

from rq.job import Job, JobStatus

from workers.artifacts import RunPaths
from workers.stages import num_shards

from ..scheduler import Scheduler, pipeline
from ..summary import iteration_summary


def stage_progress(paths: RunPaths, only: int | None = None) -> list[dict[str, Any]]:
    """Shards done per (iteration, stage) of the run's pipeline, optionally of one iteration."""
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
    """Everything ``GET /v1/runs/{id}`` shows (see :class:`services.api.models.RunView`)."""
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


def refine_view(job: Job) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a refinement job: 200 finished, 500 failed, 202 still pending."""
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return 200, {"job_id": job.id, "status": "finished", "result": job.return_value()}
    if status == JobStatus.FAILED:
        return 500, {"job_id": job.id, "status": "failed", "error": str(job.exc_info or "")[-500:]}
    return 202, {"job_id": job.id, "status": str(status), "poll": f"/v1/refine/{job.id}"}
