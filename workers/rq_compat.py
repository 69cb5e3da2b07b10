"""Every use of RQ internals, in one module, each with a test (``tests/test_rq_compat.py``).

spar's worker needs three things RQ has no public hook for:

* a scheduler process that is *spawned*, not forked, and stops when its worker dies
  (:class:`SparScheduler`, started by :func:`start_scheduler` in place of the worker's private
  ``_start_scheduler``);
* to know whether RQ's work loop ended because a stop was requested (:func:`stop_requested`) and
  to ask it to take no further job (:func:`refuse_further_jobs`);
* to stop and unlock an ended loop's scheduler process (:func:`scheduler_process`,
  :func:`release_scheduler_locks`).

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
from rq.logutils import setup_loghandlers
from rq.scheduler import RQScheduler
from rq.scheduler import run as run_scheduler
from rq.scripts import release_lock
from rq.worker import Worker

PRIVATE_WORKER_ATTRIBUTES = ("_stop_requested", "_shutdown_requested_date")
PRIVATE_WORKER_METHODS = ("_start_scheduler",)
PRIVATE_SCHEDULER_ATTRIBUTES = ("_status", "_connection", "_process")
"""The RQ privates this module touches; the compat tests check each exists and behaves as used."""


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

    def work(self) -> None:
        setup_loghandlers(name="rq.scheduler", **self._log_setup)  # a spawned child starts bare
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
