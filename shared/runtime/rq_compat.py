"""Every use of RQ internals, in one module, each with a test (``tests/test_rq_compat.py``).

spar's worker needs three things RQ has no public hook for:

* a scheduler process that is *spawned*, not forked, and stops when its worker dies
  (:class:`SparScheduler`, started by :func:`start_scheduler` in place of the worker's private
  ``_start_scheduler``);
* to know whether RQ's work loop ended because a stop was requested (:func:`stop_requested`) and
  to ask it to take no further job (:func:`refuse_further_jobs`);
* to stop and unlock an ended loop's scheduler process (:func:`scheduler_process`,
  :func:`release_scheduler_locks`);
* to never run what a job stored in Redis asks for besides its function: callbacks
  (``on_success``/``on_failure``/``on_stopped``, imported by dotted path and called in the worker,
  and by RQ's registry cleanup in whichever process cleans) and webhooks (HTTP requests from inside
  the cluster). spar creates neither, nor dependencies or repeats, so a job carrying one was not
  enqueued by spar: :func:`refusal_reasons` names what it carries (read from the job's Redis hash,
  RQ's storage fields in :data:`JOB_HAZARD_FIELDS`), :func:`disarm` makes the worker fail it through
  RQ's normal failure path without running any of it, and :class:`SparJob` is the job class of every
  spar queue, worker and registry, whose callbacks and webhooks are never looked up at all.

Everything else in spar uses RQ's public API. RQ's version range is pinned in pyproject.toml
(``rq>=2.12,<2.13``) because these names may change in any minor release; the tests fail first.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from redis import Redis
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.logutils import setup_loghandlers
from rq.scheduler import RQScheduler
from rq.scheduler import run as run_scheduler
from rq.scripts import release_lock
from rq.utils import decode_redis_hash
from rq.worker import Worker

PRIVATE_WORKER_ATTRIBUTES = ("_stop_requested", "_shutdown_requested_date")
PRIVATE_WORKER_METHODS = ("_start_scheduler",)
PRIVATE_SCHEDULER_ATTRIBUTES = ("_status", "_connection", "_process")
PRIVATE_JOB_ATTRIBUTES = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
JOB_HAZARD_FIELDS: dict[str, str] = {
    "success_callback_name": "an on_success callback",
    "failure_callback_name": "an on_failure callback",
    "stopped_callback_name": "an on_stopped callback",
    "webhooks": "webhooks",
    "dependency_ids": "dependencies",
    "dependency_id": "a dependency",
    "repeats_left": "repeats",
}
"""RQ's fields of a job's Redis hash that make RQ run or enqueue something besides the job's function."""
JOB_PUBLIC_HOOKS = ("success_callback", "failure_callback", "stopped_callback", "send_webhooks")
"""The RQ privates this module touches; the compat tests check each exists and behaves as used.
``JOB_PUBLIC_HOOKS`` are the Job members :class:`SparJob` overrides: RQ reaches callbacks and webhooks
only through them (checked by a test that runs a job with both through RQ's own worker)."""

log = logging.getLogger("spar.worker")


class SparJob(Job):
    """RQ's Job without callbacks and webhooks: nothing a job's Redis hash names runs in a spar process.

    RQ imports a stored callback by its dotted path and calls it -- in the worker on success,
    failure or stop, and in whichever process cleans the started registry of an abandoned job (the
    worker's maintenance, spar's scheduler) -- and sends stored webhooks from inside the cluster.
    spar never sets either, so here they are always absent, whatever the hash says; a job carrying
    them is also refused outright by the worker (:func:`refusal_reasons`).
    """

    unreadable: str | None = None
    """Why this job's Redis hash could not be read (None when it could): see :meth:`restore`."""

    def restore(self, raw_data: Any) -> Any:
        """RQ's restore; a hash it cannot parse becomes a job that fails with the reason, not a crash.

        RQ parses a job's dates, numbers and status as it fetches it -- in the worker's dequeue,
        and in every registry cleanup -- and one hash it cannot parse (``created_at: not-a-date``)
        raised there: the scheduler's every tick failed, a worker crashed, reconnected and took the
        same job again, holding RQ's cleanup lock for its 15-minute expiry. Here such a job is
        restored from what identifies it (origin, description) with placeholders for the rest, so
        RQ handles it like any job: the worker refuses it (:func:`refusal_reasons` gives
        :attr:`unreadable`) and RQ records it as failed, its hash then rewritten whole.
        """
        try:
            return super().restore(raw_data)
        except NoSuchJobError:
            raise
        except Exception as exc:
            why = _short(str(exc).encode())
            self.unreadable = f"its stored fields cannot be read ({type(exc).__name__}: {why})"
            fields = decode_redis_hash(raw_data)
            call = ("workers.jobs.refused", None, [self.unreadable], {})
            placeholder = {"data": self.serializer.dumps(call), "status": JobStatus.FAILED.value}
            for name in ("origin", "description"):
                value = _text(fields.get(name))
                if value is not None:
                    placeholder[name] = value
            log.error(
                "unreadable job",
                extra={"event": "job.unreadable", "job": self.id, "reason": self.unreadable},
            )
            return super().restore(placeholder)

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        if self.webhooks:
            log.warning(
                "stored webhooks not sent", extra={"event": "worker.webhooks_ignored", "job": self.id}
            )


class SparScheduler(RQScheduler):
    """RQ's scheduler process (it enqueues scheduled retries), made safe against a killed worker.

    RQ forks the scheduler from the worker, which causes two faults when the worker is killed with
    SIGKILL (OOM killer, ``kill -9``, a test harness):

    * the child lives on as an orphan, holding the queue's scheduler lock and Redis connections
      indefinitely: here it watches its parent and stops (releasing the lock, so a live worker's
      scheduler takes over) once it is re-parented;
    * a forked child holds copies of the worker's sockets, so Redis still sees the dead worker's
      blocking BLMOVE as alive and hands it the next job, which then sits in RQ's intermediate
      queue until RQ's cleanup returns it a minute later: here the process is spawned, not forked,
      and inherits nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._parent_pid = os.getpid()  # the worker's: it may be dead before the child first runs
        self._log_setup = {
            "level": kwargs.get("logging_level", logging.INFO),
            "date_format": kwargs.get("date_format", DEFAULT_LOGGING_DATE_FORMAT),
            "log_format": kwargs.get("log_format", DEFAULT_LOGGING_FORMAT),
        }

    def start(self) -> BaseProcess:
        # RQScheduler.start sets these privates before forking; a spawned child must do the same
        self._status = self.Status.STARTED
        self._connection = None  # the child connects on its own
        spawn = multiprocessing.get_context("spawn")
        process = spawn.Process(target=run_scheduler, args=(self,), name="Scheduler")
        process.start()
        self._process = process
        return process

    log_setup: Any = None
    """A module-level function that sets up this process's logs (the worker's, pickled by name)."""

    def work(self) -> None:
        if self.log_setup is not None:  # a spawned child starts bare
            self.log_setup()
        else:
            setup_loghandlers(name="rq.scheduler", **self._log_setup)
        parent = self._parent_pid

        def watch_parent() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            self.request_stop()

        threading.Thread(target=watch_parent, daemon=True, name="spar-parent-watch").start()
        super().work()


def start_scheduler(
    worker: Worker,
    burst: bool = False,
    logging_level: str | int | None = "INFO",
    date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
    log_format: str = DEFAULT_LOGGING_FORMAT,
) -> None:
    """What ``Worker._start_scheduler`` does, with :class:`SparScheduler` (spawned, stops when we die)."""
    worker.scheduler = SparScheduler(
        worker.queues,
        connection=worker.connection,
        logging_level=logging_level if logging_level is not None else worker.log.level,
        date_format=date_format,
        log_format=log_format,
        serializer=worker.serializer,
    )
    scheduler = worker.scheduler
    scheduler.log_setup = getattr(worker, "log_setup", None)
    scheduler.acquire_locks()
    if not scheduler.acquired_locks:
        return
    if burst:
        try:
            scheduler.register_birth()
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()
            scheduler.register_death()
    else:
        scheduler.start()


def stop_requested(worker: Worker) -> bool:
    """Whether RQ's loop ended because it was asked to (SIGTERM/SIGINT, a shutdown command)."""
    return bool(worker._stop_requested or worker._shutdown_requested_date)


def refuse_further_jobs(worker: Worker) -> None:
    """Make RQ's loop end after the current job, as a warm shutdown would."""
    worker._stop_requested = True


def scheduler_process(scheduler: RQScheduler | None) -> BaseProcess | None:
    """The process a started scheduler runs in (None when it never started)."""
    return None if scheduler is None else scheduler._process


def release_scheduler_locks(scheduler: RQScheduler, connection: Redis) -> list[str]:
    """Free the queue locks ``scheduler`` holds, through ``connection`` (its own may be dead).

    RQScheduler.release_locks uses the scheduler's own connection; after a Redis outage that one is
    gone, so each lock is released with RQ's compare-and-delete script on a fresh connection.
    """
    return [
        name
        for name in sorted(scheduler.acquired_locks)
        if release_lock(connection, scheduler.get_locking_key(name), scheduler.name)
    ]


def refusal_reasons(job: Job, allowed_functions: frozenset[str]) -> list[str]:
    """Why a spar worker must not run ``job`` (empty when it may): read from its Redis hash.

    spar enqueues only its own job functions, with no callbacks, webhooks, dependencies or
    repeats; anything else was put there by someone else. The hash is read directly (not RQ's
    parsed job, which drops webhooks it cannot parse), and the function name is read without
    importing anything.
    """
    if getattr(job, "unreadable", None):
        return [job.unreadable]  # type: ignore[attr-defined, list-item]
    stored = dict(zip(JOB_HAZARD_FIELDS, job.connection.hmget(job.key, list(JOB_HAZARD_FIELDS)), strict=True))
    reasons = [
        f"it carries {what} ({_short(stored[field])})"
        for field, what in JOB_HAZARD_FIELDS.items()
        if stored[field] not in (None, b"", b"[]")
    ]
    try:
        func, instance = job.func_name, job.instance
    except Exception as exc:  # an unreadable payload: not one spar wrote
        return [*reasons, f"its payload cannot be read ({type(exc).__name__})"]
    if func not in allowed_functions or instance is not None:
        reasons.insert(0, f"it names {func!r}, and this worker only runs spar's job functions")
    return reasons


def _text(value: bytes | str | None) -> str | None:
    """A stored field as text, or None when it is missing or not UTF-8."""
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _short(value: bytes | None) -> str:
    text = (value or b"").decode("utf-8", "replace")
    return text if len(text) <= 200 else text[:200] + "..."


def disarm(job: Job, reasons: list[str]) -> None:
    """Make RQ fail ``job`` with ``reasons`` through its normal failure path, running none of it.

    RQ then records the job as failed (its registries, status and result, as for any failed job)
    with a PermissionError naming the reasons. Only this in-memory copy changes before RQ saves
    it: its function becomes :func:`workers.jobs.refused`, its arguments the reasons; retries and
    repeats are dropped, callbacks and webhooks cleared (:class:`SparJob` ignores them anyway).
    """
    job.func_name = "workers.jobs.refused"
    job.instance = None
    job.args = [f"refused job {job.id}: " + "; ".join(reasons)]
    job.kwargs = {}
    job.retries_left = 0
    job.repeats_left = None
    job.webhooks = []
    for name in PRIVATE_JOB_ATTRIBUTES:  # RQ saves the job when it fails it: store no callback names
        setattr(job, name, None)
    job.connection.hdel(job.key, *JOB_HAZARD_FIELDS)  # nor webhooks, dependencies, repeats
