"""Read models of runs for the API, and the caches that keep polling them cheap.

A run's view is built from the scheduler's state (Redis) and the run directory: stage progress,
iteration summaries, the live state. The caches (:class:`DiskViewCache`, :class:`LiveStates`,
:class:`RunViewBodies`) avoid re-reading files and Redis on every poll. Not free of HTTP: a view can
raise the API's errors (``RunConflictError``), :func:`refine_view` maps a refinement job to its HTTP
status, and :class:`RunViewBodies` holds response bodies already serialised; the routes
(``services/api/routes``) only add the request handling.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rq.job import Job, JobStatus

from shared.errors import RunConflictError
from shared.runtime.artifacts import RunPaths
from shared.stages import stage as stage_info

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
    change journal (:attr:`shared.runtime.artifacts.RunPaths.changes`, appended after every finished
    shard and stage) says when that work is needed: one ``stat`` per request otherwise. The stamp is
    taken BEFORE the view is built, so a change that lands meanwhile makes the next request rebuild.
    Bounded (least recently used out); one per API process; thread-safe.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[tuple[int, int], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def _hit(self, key: str, stamp: tuple[int, int] | None) -> dict[str, Any] | None:
        """The view kept under ``key`` if it was built at ``stamp`` (marked recently used), else None."""
        if stamp is None:
            return None
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != stamp:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def fresh(self, paths: RunPaths) -> bool:
        """Whether :meth:`get` would answer from memory now (one ``stat``, no file read)."""
        return self._hit(str(paths.root), paths.change_stamp()) is not None

    def get(self, paths: RunPaths, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = str(paths.root)
        stamp = paths.change_stamp()
        hit = self._hit(key, stamp)
        if hit is not None:
            return hit
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
    from shared.runtime.shards import load_config
    from shared.runtime.versions import latest_version

    try:
        config = load_config(paths)
    except (OSError, ValueError) as exc:  # removed meanwhile, or written by an older, laxer version
        raise RunConflictError(f"run {run_id}: its config.json cannot be read ({str(exc)[:200]})") from exc
    return {
        "progress": stage_progress(paths),
        "iterations": [iteration_summary(paths, t) for t in iterations_on_disk(paths, config.iterations)],
        "models": {role: f"v{latest_version(paths, role)}" for role in ("actor", "refiner")},
    }


def run_view(
    run_id: str, paths: RunPaths, scheduler: Scheduler, state: dict[str, str] | None = None
) -> dict[str, Any]:
    """Everything ``GET /v1/runs/{id}`` shows (see :class:`services.api.models.RunView`).

    The scheduler's state (status, stage, timestamps) is read live from Redis on every call (or
    passed in, already read); what comes from the run directory is cached until the run's files
    change (:class:`DiskViewCache`).
    """
    if state is None:
        state = scheduler.state(run_id) or {}
    disk = DISK_VIEWS.get(paths, lambda: _disk_view(run_id, paths))
    return {**run_view_live(run_id, paths, state), **disk}


def run_view_live(run_id: str, paths: RunPaths, state: dict[str, str]) -> dict[str, Any]:
    """The part of a run's view that comes from the scheduler's state (no file is read)."""
    return {
        "id": run_id,
        "status": state.get("status"),
        "error": state.get("error") or None,
        "iteration": int(state.get("iteration") or 0),
        "stage": state.get("stage") or None,
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
    shown = status.value if isinstance(status, JobStatus) else str(status)  # "queued", not "JobStatus.QUEUED"
    return 202, {"job_id": job.id, "status": shown, "poll": f"/v1/refine/{job.id}"}


class LiveStates:
    """Runs' scheduler states as last read from Redis, reused for at most ``ttl`` seconds.

    Polling clients would otherwise cost one Redis round trip each. The scheduler of this process
    forgets a run's entry whenever it writes that run's state (``Scheduler.on_change``), so this
    API's own changes (a cancel, a stage advanced by its scheduler) show at once; a change written
    by another replica shows after at most ``ttl``. Unknown runs are never kept (a flood of bogus
    ids cannot fill it); bounded like the other caches.
    """

    def __init__(self, ttl: float, capacity: int = 1024) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[float, dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, run_id: str, redis: Any) -> dict[str, str] | None:
        from ..scheduler import decode_state, run_key

        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(run_id)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        state = decode_state(await redis.hgetall(run_key(run_id)))
        if state is not None and self.ttl > 0:
            with self._lock:
                self._entries[run_id] = (now, state)  # read time taken BEFORE the read
                self._entries.move_to_end(run_id)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return state

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._entries.pop(run_id, None)


class RunViewBodies:
    """The JSON body of ``GET /v1/runs/{id}``, validated and serialised once per change.

    A view is the scheduler's live state (read by the caller, once per request) plus the disk part.
    While neither changed (the same state fields, the same change-journal stamp) the body bytes are
    served as they are: :meth:`lookup` costs two ``stat`` calls and builds, validates and
    serialises nothing. Bounded (least recently used out); thread-safe.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[tuple[tuple[str, str], ...], tuple[int, int], bytes]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.serialised = 0

    @staticmethod
    def _paths(run_id: str, state: dict[str, str] | None) -> RunPaths:
        from .deps import check_run_id, paths_from_state

        check_run_id(run_id)
        return paths_from_state(run_id, state)

    def lookup(self, run_id: str, state: dict[str, str] | None) -> bytes | None:
        """The cached body when neither the state nor the run's files changed since it was built,
        else ``None`` (the caller builds). Raises 404 for an unknown or removed run."""
        paths = self._paths(run_id, state)
        stamp = paths.change_stamp()
        assert state is not None
        with self._lock:
            hit = self._entries.get(run_id)
            if stamp is None or hit is None or hit[1] != stamp or hit[0] != tuple(sorted(state.items())):
                return None
            self._entries.move_to_end(run_id)
            return hit[2]

    def reads_files(self, run_id: str, state: dict[str, str] | None) -> bool:
        """Whether :meth:`build` must read the run's files (its disk part is not in memory), or
        only its new state is to be put in: a few hundred microseconds of CPU, no file read."""
        return not DISK_VIEWS.fresh(self._paths(run_id, state))

    def build(self, run_id: str, state: dict[str, str] | None, scheduler: Scheduler) -> bytes:
        """Build the body (disk part from :data:`DISK_VIEWS`) and keep it under the stamp taken first."""
        from .models import RunView

        paths = self._paths(run_id, state)
        assert state is not None
        stamp = paths.change_stamp()  # before the build: a change meanwhile makes the next lookup miss
        view = run_view(run_id, paths, scheduler, state)
        body = RunView.model_validate(view).model_dump_json(by_alias=True).encode()
        with self._lock:
            self.serialised += 1
            if stamp is not None:  # a run without a change journal is never cached
                self._entries[run_id] = (tuple(sorted(state.items())), stamp, body)
                self._entries.move_to_end(run_id)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return body


RUN_VIEW_BODIES = RunViewBodies()
