"""The iteration state machine of the distributed service.

What a run has done is read from the artifact store (a shard is done when its ``.done.json``
exists, a stage when its manifest does); Redis holds the run's status and the queues. A tick looks
at each active run and (re)derives everything from those two, so a restarted API server loses
nothing: it simply resumes ticking.

An iteration is a dependency graph (``shared.stages.dependencies``, derived from what each stage
reads), so a run may have several stages *ready* at once: every stage without a manifest whose
inputs all have theirs (``train_actor`` and ``train_refiner`` together; iteration t+1's ``sample``
while iteration t's refiner trains or its ``eval`` runs). For each ready stage a tick enqueues the
shards whose job is missing (deterministic ids: enqueuing twice is a no-op), writes the manifest
when all shards are done (which may make the next stages ready in the same tick), and fails the run
when a shard's job has failed past its retries -- the other shards' outputs stay on disk and
``resume`` re-enqueues only the rest. ``SchedulerSettings.order = "serial"`` keeps the order before
the graph: one stage at a time, in pipeline order (benchmarks compare the two).

Fair sharing between runs (ablations share the pools): a run holds at most a *window* of unfinished
jobs per queue (``max(fair_window, 2 x the queue's live workers)``), topped up on every tick in
pipeline order (its earliest stage first: the critical path). Queues are FIFO, so a new run's jobs
wait behind at most a window of every other run's, never behind a whole stage of thousands of
shards: no run starves another, and one run alone still keeps every worker of a pool busy.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from shared.config import RunConfig
from shared.runtime.artifacts import RunPaths
from shared.runtime.queue import QUEUES, RUN_SHARD, SERIALIZER, STAGE_QUEUE, WAKE_CHANNEL, job_id
from shared.runtime.rq_compat import SparJob
from shared.runtime.shards import StageSpec, load_config, num_shards, write_stage_manifest
from shared.stages import Node, dependencies
from shared.stages import pipeline as stage_pipeline
from shared.stages import stage as stage_table

log = logging.getLogger("spar.scheduler")

RUNS_INDEX = "spar:runs"
# ARGV: field, value pairs, the last pair being updated_at. 0: the run is not active (nothing
# written); 1: active, every field already had its value (nothing written: updated_at is when the
# state last CHANGED, and an unchanged state leaves every cached view of it valid); 2: written.
_SET_IF_ACTIVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
for i = 1, #ARGV - 2, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], unpack(ARGV))
    return 2
  end
end
return 1
"""
LOCK_KEY = "spar:scheduler:lock"
TICK_KEY = "spar:scheduler:last_tick"
"""When a scheduler last got through a whole tick (epoch seconds); ``/readyz`` reads it."""
TICK_KEY_TTL_S = 3600
RECHECK_S = 30.0
"""Seconds after which an unfinished stage's jobs are looked at again even if nothing suggests a change."""
BATCH = 1000
"""Jobs per pipelined Redis round trip."""


class RunStatus(StrEnum):
    """A run's status as Redis holds it (the enum's values are what is stored and shown)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


def run_key(run_id: str) -> str:
    return f"spar:run:{run_id}"


def decode_state(raw: dict) -> dict[str, str] | None:
    """A run's state hash as Redis returns it (bytes or str), as text; ``None`` for no such run."""
    if not raw:
        return None
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


@dataclass(frozen=True)
class SchedulerSettings:
    """Job limits. ``job_timeout`` must cover the longest shard (a SimpleWorker-style worker heartbeats
    during the job, so the timeout is a real limit on work, not a liveness check)."""

    job_timeout: int = 6 * 3600
    train_timeout: int = 24 * 3600
    retries: int = 3
    retry_intervals: tuple[int, ...] = (5, 30, 120)
    result_ttl: int = 7 * 24 * 3600
    order: Literal["graph", "serial"] = "graph"
    """``graph``: every stage whose inputs are complete runs at once, each on its own pool;
    ``serial``: one stage at a time in pipeline order (what the scheduler did before the graph)."""
    fair_window: int = 8
    """The fewest unfinished jobs a run may hold in one queue (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.order not in ("graph", "serial"):
            raise ValueError(f"scheduler order must be 'graph' or 'serial', not {self.order!r}")
        if self.fair_window < 1:
            raise ValueError(f"fair_window must be >= 1, not {self.fair_window}")


def pipeline(paths: RunPaths) -> Iterator[tuple[int, str]]:
    """Every (iteration, stage) of a run, in the order they must complete."""
    config = load_config(paths)
    yield from stage_pipeline(config.stages, config.iterations, with_init=config.init is not None)


def frontier(config: RunConfig, settle: Callable[[Node, bool], bool]) -> Iterator[tuple[Node, bool]]:
    """Walk a run's dependency graph in pipeline order, as far as work can exist.

    ``settle(node, inputs_complete)`` says whether ``node`` is complete (it may complete it, e.g. by
    writing its manifest). Yields ``(node, ready)`` for every stage of every iteration the run has
    reached, ``ready`` meaning its inputs are complete and it is not; an iteration is reached when
    one of its stages is complete or ready. The walk ends before the first iteration that is not
    reached: every later stage depends on one of its stages, so the cost follows the work that
    exists, never the iteration count a client asked for.
    """
    with_init = config.init is not None
    complete: set[Node] = set()
    held: list[tuple[Node, bool]] = []
    current, reached = 0, False
    for node in stage_pipeline(config.stages, config.iterations, with_init=with_init):
        if node[0] != current:
            if not reached:
                return
            yield from held
            held, current, reached = [], node[0], False
        inputs = all(d in complete for d in dependencies(node[1], node[0], config.stages, with_init))
        done = settle(node, inputs)
        if done:
            complete.add(node)
        reached = reached or done or inputs
        held.append((node, inputs and not done))
    if reached:
        yield from held


def started_pipeline(paths: RunPaths) -> Iterator[tuple[int, str]]:
    """The (iteration, stage) pairs of the iterations a run has reached (:func:`frontier`): every
    stage of each iteration where a stage is complete or ready (all of them once the run is done).

    Routes and scrapes walk this, not :func:`pipeline`: a run's cost to show, cancel or resume must
    not grow with the iteration count a client asked for, only with the work that exists. No job
    exists past the reached iterations (a stage is enqueued only once its inputs are complete).
    """
    config = load_config(paths)
    for node, _ready in frontier(config, lambda node, _inputs: paths.manifest(*node).exists()):
        yield node


def running_stages(paths: RunPaths) -> list[Node]:
    """The stages of a run that are ready now (inputs complete, no manifest): what may be running."""
    config = load_config(paths)
    return [node for node, ready in frontier(config, lambda n, _i: paths.manifest(*n).exists()) if ready]


class Scheduler:
    def __init__(self, redis: Redis, settings: SchedulerSettings | None = None):
        self.redis = redis
        self.settings = settings or SchedulerSettings()
        self.queues = {
            name: Queue(name, connection=redis, serializer=SERIALIZER, job_class=SparJob) for name in QUEUES
        }
        self._cas = redis.register_script(_SET_IF_ACTIVE)
        self._watches: dict[tuple[str, int, str], _StageWatch] = {}
        self._failed_counts: dict[str, int] = {}
        self._workers: dict[str, int] = {}  # live workers per queue, counted each tick
        # told of every change this scheduler writes to a run's state (the API's view caches)
        self.on_change: Callable[[str], None] | None = None

    def _changed(self, run_id: str) -> None:
        if self.on_change is not None:
            self.on_change(run_id)

    # ----- the run registry -------------------------------------------------------------------
    def register(self, paths: RunPaths) -> None:
        now = time.time()
        self.redis.hset(
            run_key(paths.run_id),
            mapping={
                "run_dir": str(paths.root),
                "status": RunStatus.QUEUED.value,
                "created_at": now,
                "updated_at": now,
                "error": "",
                "iteration": 0,
                "stage": "",
                "running": "",
            },
        )
        self.redis.zadd(RUNS_INDEX, {paths.run_id: now})
        self._changed(paths.run_id)

    def run_ids(self) -> list[str]:
        return [r.decode() if isinstance(r, bytes) else r for r in self.redis.zrange(RUNS_INDEX, 0, -1)]

    def state(self, run_id: str) -> dict[str, str] | None:
        return decode_state(self.redis.hgetall(run_key(run_id)))

    def _set(self, run_id: str, **fields: object) -> None:
        self.redis.hset(
            run_key(run_id), mapping={**{k: str(v) for k, v in fields.items()}, "updated_at": time.time()}
        )
        self._changed(run_id)

    def _set_if_active(self, run_id: str, **fields: object) -> bool:
        """Write the scheduler's own status changes only while the run is still queued or running.

        A compare-and-set in one Lua call: a cancel that lands between a tick's read of the status
        and its write must win, not be overwritten by "running" (or "failed"). Fields that already
        hold these values are not written again, nor is ``updated_at`` moved: every tick re-asserts
        "running, iteration t, stage s", and a state that changed every second would invalidate
        every poller's cached view (and tell a dashboard "updated now" when nothing happened).
        Returns whether the run is still active.
        """
        args: list[str] = []
        for k, v in fields.items():
            args += [k, str(v)]
        args += ["updated_at", str(time.time())]
        outcome = int(self._cas(keys=[run_key(run_id)], args=args))
        if outcome == 2:
            self._changed(run_id)
        return outcome > 0

    # ----- ticking ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every active run by what can be done now (cheap when nothing changed).

        Nothing one job or one run holds can stop the others: a queue whose registry cannot be
        cleaned is logged and skipped (its unreadable jobs were already moved aside by
        ``SparJob``, ``shared/runtime/rq_compat.py``), a run that fails to advance is failed with the
        reason. Only Redis being away ends a tick early. A tick that got through every run is
        recorded (:data:`TICK_KEY`), which ``/readyz`` reads.
        """
        for name in QUEUES:  # jobs of dead workers come back (retry) or fail here
            # SparJob: an abandoned job's stored on_failure callback is never imported here, and a
            # job hash RQ cannot parse is failed with the reason instead of raising
            started = StartedJobRegistry(name, self.redis, job_class=SparJob, serializer=SERIALIZER)
            try:
                started.cleanup()
            except (RedisConnectionError, RedisTimeoutError):
                raise
            except Exception as exc:
                log.exception(
                    "registry cleanup failed",
                    extra={"event": "scheduler.cleanup_error", "queue": name, "error": str(exc)[:200]},
                )
        self._failed_counts, self._workers = self._count_failed()
        for run_id in self.run_ids():
            state = self.state(run_id)
            if state and state.get("status") in ACTIVE:
                try:
                    self.advance(run_id, RunPaths(Path(state["run_dir"])))
                except (RedisConnectionError, RedisTimeoutError):
                    raise  # Redis is away, the run is fine: serve() waits and ticks again
                except Exception as exc:  # a broken run must not stop the others
                    log.exception("advance failed", extra={"event": "run.advance_error", "run": run_id})
                    self._set_if_active(run_id, status=RunStatus.FAILED, error=f"scheduler error: {exc}")
        self.redis.set(TICK_KEY, f"{time.time():.3f}", ex=TICK_KEY_TTL_S)

    def _count_failed(self) -> tuple[dict[str, int], dict[str, int]]:
        """Jobs in each queue's failed and canceled registries -- a change is what makes a stage's
        jobs worth looking at again before :data:`RECHECK_S` has passed -- and the workers that
        listen on each queue (what sizes a run's window), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in QUEUES:
                pipe.zcard(f"rq:failed:{name}")
                pipe.zcard(f"rq:canceled:{name}")
                pipe.scard(f"rq:workers:{name}")
            counts = pipe.execute()
        failed = {name: counts[3 * k] + counts[3 * k + 1] for k, name in enumerate(QUEUES)}
        return failed, {name: int(counts[3 * k + 2]) for k, name in enumerate(QUEUES)}

    def window(self, queue: str) -> int:
        """The most unfinished jobs one run may hold in ``queue``: enough to keep every worker of the
        pool busy (two each, so a worker never waits for the next tick), few enough that another
        run's jobs are never queued behind a whole stage (the fairness policy, module docstring)."""
        return max(self.settings.fair_window, 2 * self._workers.get(queue, 0))

    def advance(self, run_id: str, paths: RunPaths) -> None:
        """Move every ready stage of the run on; the cost does not grow with a stage's shards.

        Ready stages are found by :func:`frontier` (a stage whose shards are all done gets its
        manifest here, which may make the next ones ready in the same tick); ``serial`` order stops
        at the first. Done shards are listed only when the stage folder changed (one ``stat``
        otherwise); a stage's jobs are looked at -- every pending one in one pipelined round trip --
        when the stage is new, when a job of its queue failed or was cancelled, when the run has room
        in the queue's window for shards not enqueued yet, or every :data:`RECHECK_S`.
        """
        config = load_config(paths)
        serial = self.settings.order == "serial"
        ready: list[Node] = []

        def settle(node: Node, inputs: bool) -> bool:
            if paths.manifest(*node).exists():
                return True
            if not inputs or (serial and ready):
                return False
            watch = self._watch(run_id, paths, *node)
            if len(watch.done) >= watch.total:
                write_stage_manifest(paths, *node)
                self._watches.pop((run_id, *node), None)
                log.info(
                    "stage done",
                    extra={"event": "stage.done", "run": run_id, "iteration": node[0], "stage": node[1]},
                )
                return True
            ready.append(node)
            return False

        for _walked in frontier(config, settle):
            pass
        if not ready:
            blocked = next((node for node in pipeline(paths) if not paths.manifest(*node).exists()), None)
            if blocked is not None:  # a table whose reads name a stage that can never complete
                raise RuntimeError(
                    f"no stage of the run can start: iteration {blocked[0]} {blocked[1]} waits"
                )
            self._set_if_active(run_id, status=RunStatus.SUCCEEDED, stage="", running="", error="")
            log.info("run succeeded", extra={"event": "run.succeeded", "run": run_id})
            return
        running = ",".join(f"{t}:{name}" for t, name in ready)
        first = ready[0]
        if not self._set_if_active(
            run_id, status=RunStatus.RUNNING, iteration=first[0], stage=first[1], running=running
        ):
            return  # cancelled meanwhile: enqueue nothing more
        held = dict.fromkeys(QUEUES, 0)  # the run's unfinished jobs in each queue, as known
        for node in ready:
            held[STAGE_QUEUE[node[1]]] += self._watches[(run_id, *node)].outstanding
        for iteration, stage in ready:  # pipeline order: the critical path is topped up first
            watch = self._watches[(run_id, iteration, stage)]
            queue = STAGE_QUEUE[stage]
            others = held[queue] - watch.outstanding  # what the run's other stages hold of the window
            failed_count = self._failed_counts.get(queue, 0)
            unqueued = watch.total - len(watch.jobs | watch.done)
            due = (
                watch.looked_at is None
                or watch.failed_count != failed_count
                or (unqueued > 0 and held[queue] < self.window(queue))
                or time.monotonic() - watch.looked_at > RECHECK_S
            )
            if due:
                if watch.looked_at is None:
                    log.info(
                        "stage ready",
                        extra={
                            "event": "stage.ready",
                            "run": run_id,
                            "iteration": iteration,
                            "stage": stage,
                            "queue": queue,
                            "running": running,
                            "order": self.settings.order,
                        },
                    )
                watch.looked_at, watch.failed_count = time.monotonic(), failed_count
                limit = self.window(queue) - others
                if not self._look_at_jobs(run_id, paths, iteration, stage, watch, limit):
                    return  # the run failed: nothing more is enqueued
                held[queue] = others + watch.outstanding

    def _watch(self, run_id: str, paths: RunPaths, iteration: int, stage: str) -> _StageWatch:
        """The stage's watch, its done shards listed again only when the folder changed."""
        key = (run_id, iteration, stage)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _StageWatch(total=num_shards(paths, stage))
        folder = paths.stage_dir(iteration, stage)
        try:
            mtime = folder.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        now = time.monotonic()
        if mtime != watch.folder_mtime or now - watch.listed_at > RECHECK_S:  # coarse mtimes too
            watch.folder_mtime, watch.done, watch.listed_at = mtime, _done_shards(folder), now
        return watch

    def _look_at_jobs(
        self, run_id: str, paths: RunPaths, iteration: int, stage: str, watch: _StageWatch, limit: int
    ) -> bool:
        """Enqueue the pending shards that have no job (lowest shards first, until the stage holds
        ``limit`` unfinished jobs), re-run those finished without output, and fail the run when a
        shard's job failed past its retries -- statuses in one round trip. Returns False when the
        run failed."""
        pending = [k for k in range(watch.total) if k not in watch.done]
        ids = [job_id(run_id, iteration, stage, k) for k in pending]
        statuses = self._statuses(ids)
        missing = [k for k, status in zip(pending, statuses, strict=True) if status is None]
        redo = [k for k, status in zip(pending, statuses, strict=True) if status == JobStatus.FINISHED]
        failures = [
            k
            for k, status in zip(pending, statuses, strict=True)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
        ]
        jobs = {k for k, status in zip(pending, statuses, strict=True) if status is not None}
        for shard in redo:  # finished without output (e.g. the output was removed): run again
            if not paths.shard_done(iteration, stage, shard).exists():
                self.redis.delete(SparJob.key_for(job_id(run_id, iteration, stage, shard)))
                missing.append(shard)
                jobs.discard(shard)
        watch.jobs = frozenset(jobs)  # what Redis holds now (after an API restart: found here)
        missing = sorted(missing)[: max(limit - watch.outstanding, 0)]
        if missing:
            self._enqueue_many(paths, iteration, stage, missing)
            watch.jobs |= frozenset(missing)
        if failures:
            job = self._job(run_id, iteration, stage, failures[0])
            error = _last_error(job) if job is not None else "its job is gone"
            message = (
                f"iteration {iteration} stage {stage}: {len(failures)} shard(s) failed after "
                f"{self.settings.retries} retries; shard {failures[0]}: {error}"
            )
            self._set_if_active(run_id, status=RunStatus.FAILED, error=message)
            log.error("run failed", extra={"event": "run.failed", "run": run_id, "error": message})
            return False
        return True

    def _statuses(self, ids: list[str]) -> list[JobStatus | None]:
        """Each job's status (None: no such job, or a status RQ does not know), pipelined in chunks."""
        out: list[JobStatus | None] = []
        for start in range(0, len(ids), BATCH):
            with self.redis.pipeline(transaction=False) as pipe:
                for one in ids[start : start + BATCH]:
                    pipe.hget(SparJob.key_for(one), "status")
                raw = pipe.execute()
            out += [_status(value) for value in raw]
        return out

    def _job(self, run_id: str, iteration: int, stage: str, shard: int) -> Job | None:
        try:
            return SparJob.fetch(
                job_id(run_id, iteration, stage, shard), connection=self.redis, serializer=SERIALIZER
            )
        except NoSuchJobError:
            return None

    def _enqueue_many(self, paths: RunPaths, iteration: int, stage: str, shards: list[int]) -> None:
        """Enqueue the shards' jobs, :data:`BATCH` to a pipeline (one round trip each)."""
        queue = self.queues[STAGE_QUEUE[stage]]
        timeout = self.settings.train_timeout if STAGE_QUEUE[stage] == "train" else self.settings.job_timeout
        retry = Retry(max=self.settings.retries, interval=list(self.settings.retry_intervals))
        for start in range(0, len(shards), BATCH):
            queue.enqueue_many(
                [
                    Queue.prepare_data(
                        RUN_SHARD,
                        kwargs={
                            "spec": StageSpec(
                                run_dir=str(paths.root), iteration=iteration, stage=stage, shard=shard
                            ).model_dump()
                        },
                        job_id=job_id(paths.run_id, iteration, stage, shard),
                        timeout=timeout,
                        retry=retry,
                        result_ttl=self.settings.result_ttl,
                        failure_ttl=self.settings.result_ttl,
                        description=f"{paths.run_id} iter {iteration} {stage} shard {shard}",
                    )
                    for shard in shards[start : start + BATCH]
                ]
            )

    def _enqueue(self, paths: RunPaths, iteration: int, stage: str, shard: int) -> None:
        self._enqueue_many(paths, iteration, stage, [shard])

    # ----- user actions -----------------------------------------------------------------------
    def cancel(self, run_id: str, paths: RunPaths) -> bool:
        """Mark the run cancelled (only while it is queued or running: False otherwise, and nothing
        changes), then stop its running shards and cancel its waiting ones; finished shards stay.

        Statuses are read in one pipelined pass and waiting jobs cancelled in pipelines: the cost
        is a few round trips whatever the shard count (a 5,000-shard run took 6.6 s one by one).
        """
        if not self._set_if_active(run_id, status=RunStatus.CANCELLED, error="cancelled by request"):
            return False
        self._watches = {k: v for k, v in self._watches.items() if k[0] != run_id}
        jobs = self._started_jobs(paths)
        waiting: list[tuple[str, str]] = []
        for (one, queue), status in zip(jobs, self._statuses([j for j, _ in jobs]), strict=True):
            if status == JobStatus.STARTED:
                try:
                    send_stop_job_command(self.redis, one, serializer=SERIALIZER)
                except InvalidJobOperation:
                    pass
            elif status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                waiting.append((one, queue))
        for start in range(0, len(waiting), BATCH):
            with self.redis.pipeline() as pipe:
                for one, queue in waiting[start : start + BATCH]:
                    self._cancel_waiting(one, queue, pipe)
                pipe.execute()
        return True

    def _cancel_waiting(self, one: str, queue: str, pipe: Pipeline) -> None:
        """What RQ's ``Job.cancel`` does to a waiting job, queued on ``pipe`` without fetching it
        (``Job.cancel`` re-reads the job's status first: one round trip per job, 5,000 for a big
        stage): out of its queue and scheduled registry, status canceled, into the canceled registry."""
        registries = self.queues[queue]
        registries.remove(one, pipeline=pipe)
        registries.scheduled_job_registry.remove(one, pipeline=pipe)
        registries.deferred_job_registry.remove(one, pipeline=pipe)
        job = SparJob(one, connection=self.redis, serializer=SERIALIZER)
        job.set_status(JobStatus.CANCELED, pipeline=pipe)
        registries.canceled_job_registry.add(job, pipeline=pipe)

    def resume(self, run_id: str, paths: RunPaths) -> None:
        """Re-activate a failed or cancelled run: failed jobs are dropped so their shards run again."""
        ids = [one for one, _ in self._started_jobs(paths)]
        dead = [
            one
            for one, status in zip(ids, self._statuses(ids), strict=True)
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
        ]
        for start in range(0, len(dead), BATCH):
            for job in SparJob.fetch_many(dead[start : start + BATCH], self.redis, serializer=SERIALIZER):
                if job is not None:
                    job.delete()
        self._watches = {k: v for k, v in self._watches.items() if k[0] != run_id}
        self._set(run_id, status=RunStatus.QUEUED, error="")

    def _started_jobs(self, paths: RunPaths) -> list[tuple[str, str]]:
        """(job id, queue) of every shard of the stages the run has reached."""
        shards = paths.num_prompt_shards()
        return [
            (job_id(paths.run_id, iteration, stage, shard), STAGE_QUEUE[stage])
            for iteration, stage in started_pipeline(paths)
            for shard in range(shards if stage_table(stage).sharded else 1)
        ]

    # ----- the loop ---------------------------------------------------------------------------
    def serve(self, stop: object, interval: float = 1.0) -> None:
        """Tick until ``stop.is_set()``; only the holder of a Redis lock ticks (one scheduler per cluster).

        Nothing may end this loop but ``stop``: it is the only thing moving runs forward, and a
        thread that died on a Redis timeout (a stall longer than the client's socket timeout) would
        leave every run "running" forever while the API kept answering.
        """
        token = f"{os.getpid()}-{time.time()}"
        waker = _Waker(self.redis)
        down_since: float | None = None  # Redis unreachable since (monotonic); logged once per change
        while not stop.is_set():  # type: ignore[attr-defined]
            try:
                holder = self.redis.set(LOCK_KEY, token, nx=True, ex=max(int(interval * 10), 5))
                if down_since is not None:
                    log.warning(
                        "redis reachable again",
                        extra={
                            "event": "scheduler.redis_up",
                            "down_s": round(time.monotonic() - down_since, 1),
                        },
                    )
                    down_since = None
                mine = holder or (self.redis.get(LOCK_KEY) or b"").decode() == token
                if mine:
                    self.redis.expire(LOCK_KEY, max(int(interval * 10), 5))
                    self.tick()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if down_since is None:  # once when it goes away, not once per tick while it stays away
                    down_since = time.monotonic()
                    log.warning(
                        "redis unreachable; runs wait until it answers",
                        extra={"event": "scheduler.redis_down", "error": str(exc)[:200]},
                    )
            except Exception:
                log.exception("tick failed", extra={"event": "scheduler.tick_error"})
            if not waker.wait(interval):
                stop.wait(interval)  # type: ignore[attr-defined]
        waker.close()


class _Waker:
    """Waits for a worker's "shard done" message (or the tick interval), whichever comes first.

    Without it every stage change costs up to one tick interval of idle time, which on short
    stages is most of the service's overhead over the local executor.
    """

    def __init__(self, redis: Redis):
        self.redis = redis
        self.pubsub = None

    def wait(self, timeout: float) -> bool:
        """True when the wait happened here (message or timeout); False when Redis is unavailable."""
        try:
            if self.pubsub is None:
                self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                self.pubsub.subscribe(WAKE_CHANNEL)
            if self.pubsub.get_message(timeout=timeout) is not None:
                while self.pubsub.get_message(timeout=0.01) is not None:  # one tick serves a burst
                    pass
            return True
        except Exception as exc:  # Redis away: the scheduler falls back to its periodic tick
            log.debug("wake-up wait failed", extra={"event": "scheduler.wake_wait_failed", "error": str(exc)})
            self.close()
            return False

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception as exc:  # its connection is already gone: nothing left to close
                log.debug(
                    "wake-up subscription close failed",
                    extra={"event": "scheduler.pubsub_close", "error": str(exc)},
                )
            self.pubsub = None


@dataclass
class _StageWatch:
    """What a scheduler knows of one unfinished stage between ticks (in memory; rebuilt from the
    files and Redis after a restart)."""

    total: int
    folder_mtime: int = -2
    listed_at: float = 0.0  # monotonic time the folder was last listed
    done: frozenset[int] = frozenset()
    looked_at: float | None = None  # monotonic time the stage's jobs were last looked at
    jobs: frozenset[int] = frozenset()  # shards known to have a job (enqueued by us or seen in Redis)
    failed_count: int = -1  # the queue's failed + canceled jobs at that look

    @property
    def outstanding(self) -> int:
        """Jobs of the stage not finished yet: what it holds of its run's window in the queue."""
        return len(self.jobs - self.done)


def _done_shards(folder: Path) -> frozenset[int]:
    """Shard numbers with a ``.done.json`` in ``folder``: one directory listing, no stat per shard."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return frozenset()
    out = set()
    for name in names:
        if name.startswith("shard_") and name.endswith(".done.json"):
            digits = name[len("shard_") : -len(".done.json")]
            if digits.isdigit():
                out.add(int(digits))
    return frozenset(out)


def _status(raw: bytes | None) -> JobStatus | None:
    if raw is None:
        return None
    try:
        return JobStatus(raw.decode())
    except (UnicodeDecodeError, ValueError):  # a hash RQ did not write; its job is failed elsewhere
        return JobStatus.FAILED


def _last_error(job: Job) -> str:
    text = job.latest_result().exc_string if job.latest_result() else (job.exc_info or "")
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"job {job.get_status()}"
