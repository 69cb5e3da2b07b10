"""Read models of runs for the API, and the caches that keep polling them cheap.

A run's view is built from the scheduler's state (Redis) and the run directory: stage progress,
iteration summaries, the live state. The caches (:class:`DiskViewCache`, :class:`LiveStates`,
:class:`RunViewBodies`) avoid re-reading files and Redis on every poll. Not free of HTTP: a view can
raise the API's errors (``RunConflictError``), :func:`refine_view` maps a refinement job to its HTTP
status, and :class:`RunViewBodies` holds response bodies already serialised; the routes
(``services/api/routes``) only add the request handling.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from rq.job import Job, JobStatus

from shared.errors import RunConflictError
from shared.runtime.artifacts import RunPaths
from shared.stages import stage as stage_info

from ..scheduler import decode_state, run_key, started_pipeline
from ..summary import iteration_summary
from .deps import MAX_RUN_ID, check_run_id, paths_from_state
from .models import RunView


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


def disk_view(run_id: str, paths: RunPaths) -> dict[str, Any]:
    """The part of a run's view read from its directory: every manifest, done record and version
    (hundreds of files for a long run), which is why :class:`RunViewCache` keeps it."""
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
        "eta": _eta(paths, config),
    }


def _eta(paths: RunPaths, config: Any) -> dict[str, Any] | None:
    """The run's ETA from its recorded shards (``services/eta.py``), computed with the disk part of the
    view, so once per change of the run; ``computed_at`` lets a client count down in between."""
    from shared.runtime.settings import settings

    from ..estimate import load_rates
    from ..eta import run_eta

    try:
        return run_eta(paths, config, load_rates(config, settings().cache_root)).model_dump()
    except (OSError, ValueError):  # a record being replaced as it is read: no ETA this time
        return None


def render_view(run_id: str, paths: RunPaths, state: dict[str, str], disk: dict[str, Any]) -> bytes:
    """The JSON body of ``GET /v1/runs/{id}``: the live part and the disk part, checked against
    :class:`services.api.models.RunView` (what the route declares) and serialised."""
    view = {**run_view_live(run_id, paths, state), **disk}
    return RunView.model_validate(view).model_dump_json(by_alias=True).encode()


def run_view_live(run_id: str, paths: RunPaths, state: dict[str, str]) -> dict[str, Any]:
    """The part of a run's view that comes from the scheduler's state (no file is read)."""
    return {
        "id": run_id,
        "status": state.get("status"),
        "error": state.get("error") or None,
        "iteration": int(state.get("iteration") or 0),
        "stage": state.get("stage") or None,
        "running": running_from_state(state),
        "created_at": float(state.get("created_at") or 0),
        "updated_at": float(state.get("updated_at") or 0),
        "run_dir": str(paths.root),
        "source": state.get("source") or "service",
    }


def running_from_state(state: dict[str, str]) -> list[dict[str, Any]]:
    """Every stage the scheduler has ready (enqueued or running) for the run, in pipeline order.

    Stages of one run overlap (the stage graph, ``services/scheduler.py``), so one ``stage`` field
    cannot say where a run is; ``iteration``/``stage`` stay, naming the first of these, for the
    clients that read them. Only while the run is active: a finished run runs nothing.
    """
    if state.get("status") not in ("queued", "running"):
        return []
    out = []
    for item in (state.get("running") or "").split(","):
        iteration, _, stage = item.partition(":")
        if iteration.isdigit() and stage:
            out.append({"iteration": int(iteration), "stage": stage})
    return out


def refine_view(job: Job) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a refinement job: 200 finished, 500 failed, 202 still pending."""
    status = job.get_status(refresh=True)
    if status == JobStatus.FINISHED:
        return 200, {"job_id": job.id, "status": "finished", "result": job.return_value()}
    if status == JobStatus.FAILED:
        return 500, {"job_id": job.id, "status": "failed", "error": str(job.exc_info or "")[-500:]}
    shown = status.value if isinstance(status, JobStatus) else str(status)  # "queued", not "JobStatus.QUEUED"
    return 202, {"job_id": job.id, "status": shown, "poll": f"/v1/refine/{job.id}"}


Stamp = tuple[int, int]  # (inode, size) of a run's change journal: RunPaths.change_stamp
StateKey = tuple[tuple[str, str], ...]  # a scheduler state, comparable and hashable


def _state_key(state: dict[str, str]) -> StateKey:
    return tuple(sorted(state.items()))


@dataclass
class _Entry:
    """What :class:`RunViewCache` keeps of one run. Each part is valid exactly while what it was
    made from is unchanged: ``state`` for ``state_ttl`` seconds after ``state_read_at`` (or until
    this process's scheduler writes the run's state); ``disk`` while the run's change journal has
    ``stamp``; ``body`` while, in addition, the state is still ``body_state``."""

    state: dict[str, str] | None = None
    state_read_at: float = float("-inf")
    stamp: Stamp | None = None
    disk: dict[str, Any] | None = None
    body_state: StateKey | None = None
    body: bytes | None = None


class RunViewCache:
    """The one cache behind ``GET /v1/runs/{id}``: per run, its scheduler state, the disk part of
    its view and the serialised body, under one bound and one least-recently-used eviction.

    Why each part is kept (measured with ``bench/api_load.py``, see docs/results/api-latency.md):

    - the *state* saves a Redis round trip per poll; it is reused for at most ``state_ttl`` seconds
      and forgotten as soon as this process's scheduler writes it (:meth:`forget_state`, hooked to
      ``Scheduler.on_change``), so this API's own changes show at once, another replica's within
      the TTL. Unknown runs are never kept: a flood of bogus ids cannot fill the cache;
    - the *disk part* saves reading every manifest and done record of the run on every poll; the
      run's change journal (:attr:`shared.runtime.artifacts.RunPaths.changes`, appended after every
      finished shard and stage) says when it is stale, one ``stat`` per request;
    - the *body* saves building, validating and serialising the view: while neither the state nor
      the journal changed, a poll is a dictionary lookup and a ``stat``.

    The rule for what is rebuilt follows from what changed: a new state alone is put into the kept
    disk part inline (a few hundred microseconds: through a thread it took 15-20 ms of wall time
    under load); a change of the run's files reads them in a worker thread, ONCE however many polls
    arrive meanwhile (:meth:`body`'s single flight; without it 50 pollers made 50 builds). The
    journal's stamp is taken BEFORE a build, so a change landing during it makes the next request
    rebuild: a changed run is never served stale. A run without a journal (made by an older spar)
    is never kept.

    One per API (``app.state.run_views``); thread-safe (builds finish in worker threads, the
    scheduler forgets states from its own thread).
    """

    def __init__(self, state_ttl: float, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.state_ttl = state_ttl
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, Stamp | None, StateKey], asyncio.Future[bytes]] = {}
        self.disk_reads = 0  # builds that read the run's files (tests and metrics read these)
        self.renders = 0  # bodies validated and serialised

    # ----- the one bound: least recently used out ---------------------------------------------
    def _keep(self, run_id: str) -> _Entry:
        """The entry of ``run_id`` (new if need be) marked most recently used; the least recently
        used entries go past ``capacity``. Call with the lock held."""
        entry = self._entries.get(run_id)
        if entry is None:
            entry = self._entries[run_id] = _Entry()
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(run_id)
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._entries

    # ----- the scheduler state ----------------------------------------------------------------
    async def state(self, run_id: str, redis: Any) -> dict[str, str] | None:
        """The run's scheduler state (``None``: no such run), read from ``redis`` (async) unless
        read less than ``state_ttl`` seconds ago and not written by this process since."""
        if len(run_id) > MAX_RUN_ID:
            return None  # never a Redis key; the body's lookup answers 404
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None and entry.state is not None and now - entry.state_read_at < self.state_ttl:
                return entry.state
        state = decode_state(await redis.hgetall(run_key(run_id)))
        if state is not None and self.state_ttl > 0:
            with self._lock:
                entry = self._keep(run_id)
                entry.state, entry.state_read_at = state, now  # read time taken BEFORE the read
        return state

    def forget_state(self, run_id: str) -> None:
        """This process wrote the run's state: the next request reads it again (the disk part and
        the body stay; the body is checked against the new state anyway)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None:
                entry.state = None

    # ----- the body ---------------------------------------------------------------------------
    @staticmethod
    def _paths(run_id: str, state: dict[str, str] | None) -> RunPaths:
        """The run's directory; :class:`shared.errors.RunNotFoundError` (404) for an overlong id, an
        unknown run (``state`` None) or a run whose directory is gone."""
        check_run_id(run_id)
        return paths_from_state(run_id, state)

    def _kept(
        self, run_id: str, stamp: Stamp | None
    ) -> tuple[dict[str, Any], StateKey | None, bytes | None] | None:
        """(disk part, state of the body, body) kept for ``run_id`` if its disk part was built at
        ``stamp``, else None; marks the run recently used. Read in one go under the lock: a build
        finishing in a thread meanwhile cannot pair this stamp with another stamp's body."""
        if stamp is None:
            return None
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None or entry.disk is None or entry.stamp != stamp:
                return None
            self._entries.move_to_end(run_id)
            return entry.disk, entry.body_state, entry.body

    def cached_body(self, run_id: str, state: dict[str, str] | None) -> bytes | None:
        """The kept body when neither the state nor the run's files changed since it was built,
        else ``None``; nothing is built (what the ASGI shortcut, :mod:`.cached_view`, serves).
        Raises 404 for an unknown or removed run."""
        paths = self._paths(run_id, state)
        assert state is not None
        kept = self._kept(run_id, paths.change_stamp())
        if kept is None or kept[1] != _state_key(state):
            return None
        return kept[2]

    async def body(self, run_id: str, state: dict[str, str] | None) -> bytes:
        """The body of ``GET /v1/runs/{id}``: kept, or put together from the kept disk part and the
        new state inline, or built from the run's files in a worker thread, once per change however
        many requests wait for it. Raises 404 for an unknown or removed run."""
        paths = self._paths(run_id, state)
        assert state is not None
        stamp = paths.change_stamp()  # before any build: a change meanwhile makes the next one miss
        key = _state_key(state)
        kept = self._kept(run_id, stamp)
        if kept is not None:
            disk, body_state, body = kept
            if body_state == key and body is not None:
                return body
            return self._render(run_id, paths, state, stamp, disk)  # only the state changed: inline
        flight = (run_id, stamp, key)
        running = self._flights.get(flight)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._flights[flight] = future
        try:
            body = await anyio.to_thread.run_sync(self._build, run_id, paths, state, stamp)
            future.set_result(body)
            return body
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here: a build nobody else waited for is not "never retrieved"
            raise
        finally:
            del self._flights[flight]

    def _build(self, run_id: str, paths: RunPaths, state: dict[str, str], stamp: Stamp | None) -> bytes:
        """Read the run's files and render (in a worker thread)."""
        disk = disk_view(run_id, paths)
        with self._lock:
            self.disk_reads += 1
        return self._render(run_id, paths, state, stamp, disk)

    def _render(
        self, run_id: str, paths: RunPaths, state: dict[str, str], stamp: Stamp | None, disk: dict[str, Any]
    ) -> bytes:
        """Serialise the view and keep it (and its disk part) under ``stamp``, taken before the build."""
        body = render_view(run_id, paths, state, disk)
        with self._lock:
            self.renders += 1
            if stamp is not None:
                entry = self._keep(run_id)
                entry.stamp, entry.disk, entry.body_state, entry.body = stamp, disk, _state_key(state), body
        return body
