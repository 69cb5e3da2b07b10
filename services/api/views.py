"""Read models of runs, built from the scheduler's state and the run directory (no HTTP here)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rq.job import Job, JobStatus

from shared.errors import RunConflictError
from shared.stages import stage as stage_info
from workers.artifacts import RunPaths

from ..scheduler import Scheduler, started_pipeline
from ..summary import iteration_summary


def stage_progress(paths: RunPaths, only: int | None = None) -> list[dict[str, Any]]:
    """Shards done per (iteration, stage) of the iterations the run has reached (optionally of one).

    Bounded by the work that exists (:func:`services.scheduler.started_pipeline`), never by the
    iteration count the config asks for.
    """
    out = []
    total_shards = paths.num_prompt_shards() if (paths.root / "prompts").exists() else 0
    for iteration, stage in started_pipeline(paths):
        if only is not None and iteration != only:
            continue
        total = total_shards if stage_info(stage).sharded else 1
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


def iterations_on_disk(paths: RunPaths, limit: int) -> list[int]:
    """The iterations that have a folder (``iter_<t>``, t < ``limit``), in order: what a view lists."""
    found = []
    for child in paths.root.glob("iter_*"):
        digits = child.name.removeprefix("iter_")
        if digits.isdigit() and len(digits) < 10 and int(digits) < limit and child.is_dir():
            found.append(int(digits))
    return sorted(found)


class DiskViewCache:
    """The part of a run's view read from its directory, kept until the run's files change.

    ``GET /v1/runs/{id}`` is polled by dashboards and scripts; rebuilding it reads every manifest,
    done record and version of the run (hundreds of files for a long run) on every call. The run's
    change journal (:attr:`workers.artifacts.RunPaths.changes`, appended after every finished
    shard and stage) says when that work is needed: one ``stat`` per request otherwise. The stamp is
    taken BEFORE the view is built, so a change that lands meanwhile makes the next request rebuild.
    Bounded (least recently used out); one per API process; thread-safe.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[tuple[int, int], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def get(self, paths: RunPaths, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = str(paths.root)
        stamp = paths.change_stamp()
        if stamp is not None:
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None and hit[0] == stamp:
                    self._entries.move_to_end(key)
                    return hit[1]
        view = build()
        self.builds += 1
        if stamp is not None:
            with self._lock:
                self._entries[key] = (stamp, view)
                self._entries.move_to_end(key)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return view


DISK_VIEWS = DiskViewCache()


def _disk_view(run_id: str, paths: RunPaths) -> dict[str, Any]:
    from workers.jobs import latest_version
    from workers.stages.common import load_config

    try:
        config = load_config(paths)
    except (OSError, ValueError) as exc:  # removed meanwhile, or written by an older, laxer version
        raise RunConflictError(f"run {run_id}: its config.json cannot be read ({str(exc)[:200]})") from exc
    return {
        "progress": stage_progress(paths),
        "iterations": [iteration_summary(paths, t) for t in iterations_on_disk(paths, config.iterations)],
        "models": {role: f"v{latest_version(paths, role)}" for role in ("actor", "refiner")},
    }


def run_view(run_id: str, paths: RunPaths, scheduler: Scheduler) -> dict[str, Any]:
    """Everything ``GET /v1/runs/{id}`` shows (see :class:`services.api.models.RunView`).

    The scheduler's state (status, stage, timestamps) is read live from Redis on every call; what
    comes from the run directory is cached until the run's files change (:class:`DiskViewCache`).
    """
    state = scheduler.state(run_id) or {}
    disk = DISK_VIEWS.get(paths, lambda: _disk_view(run_id, paths))
    return {
        "id": run_id,
        "status": state.get("status"),
        "error": state.get("error") or None,
        "iteration": int(state.get("iteration") or 0),
        "stage": state.get("stage") or None,
        **disk,
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
