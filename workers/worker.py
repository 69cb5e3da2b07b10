"""The queue worker: ``spar worker --role actor|refiner|train``.

RQ's default worker forks a child per job, which would reload a GPU model for every shard. A
``SimpleWorker`` runs jobs in its own process and so keeps the model -- but RQ then sends no
heartbeat while a job runs, and a job's registry entry lives ``job_timeout + 60`` s: a worker killed
mid-job would hold its shard that long. :class:`SparWorker` keeps heartbeats going from a thread
during the job with a short TTL, so a dead worker's shard is found abandoned (and retried by the
scheduler's registry cleanup) within ``heartbeat_ttl`` seconds, however long the job is allowed to run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import UnixSignalDeathPenalty

from shared.errors import (
    WorkerSettingsError,  # noqa: F401  (also importable from here)
)
from shared.runtime import rq_compat
from shared.runtime.queue import REFINE_ONE, RUN_SHARD, SERIALIZER, QueueName, worker_key
from shared.runtime.settings import settings

from .jobs import ENGINES

log = logging.getLogger("spar.worker")

DEFAULT_HEARTBEAT_TTL = 30
ALLOWED_FUNCTIONS = frozenset({RUN_SHARD, REFINE_ONE, "workers.jobs.noop"})


def _stray_alarm(signum: int, frame: object) -> None:
    """SIGALRM outside a job's time limit: a stop command that arrived late, dropped on purpose."""
    log.info("stray stop signal ignored", extra={"event": "worker.stray_stop"})


class SparDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job time limit, except that between jobs SIGALRM is ignored instead of fatal.

    :meth:`SparWorker.kill_horse` stops a job by raising SIGALRM in the worker itself. RQ restores
    the default action (terminate the process) when a job's time limit ends, so a stop arriving
    just after -- a second cancel while the first is being handled, or a job finishing at that
    moment -- silently killed the whole worker and left its job to be retried as abandoned.
    """

    def cancel_death_penalty(self) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, _stray_alarm)


class SparWorker(SimpleWorker):
    """A SimpleWorker that heartbeats during jobs and publishes what it is doing for ``/v1/workers``."""

    death_penalty_class = SparDeathPenalty
    job_class = rq_compat.SparJob  # stored callbacks and webhooks are never looked up
    log_setup: Callable[[], None] | None = None
    """How the worker's spawned scheduler process sets up its logs (a module-level function: it is
    pickled by name); None: RQ's text lines."""

    def __init__(self, *args: Any, role: str, heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL, **kwargs: Any):
        kwargs.setdefault("serializer", SERIALIZER)
        super().__init__(*args, **kwargs)
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            signal.signal(signal.SIGALRM, _stray_alarm)
        self.role = role
        self.heartbeat_ttl = heartbeat_ttl
        self._stop_beating = threading.Event()
        self.needs_fresh_process = False
        self.publish(current_job="")

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.heartbeat_ttl

    def publish(self, **fields: str) -> None:
        """Role, model versions and current job, in a hash that expires if the worker dies."""
        key = worker_key(self.name)
        mapping = {
            "role": self.role,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            **ENGINES.published(),  # the resident engine's models and host process, empty after release
            "last_seen": f"{time.time():.3f}",
            **fields,
        }
        self.connection.hset(key, mapping=mapping)
        self.connection.expire(key, max(self.heartbeat_ttl * 2, 10))

    def _beat(self, job: Job) -> None:
        while not self._stop_beating.wait(max(self.heartbeat_ttl / 3, 0.5)):
            try:
                self.maintain_heartbeats(job)
                self.publish(current_job=job.id)
            except Exception as exc:  # Redis briefly away: the next beat tries again
                log.warning("heartbeat failed", extra={"event": "worker.heartbeat_failed", "error": str(exc)})

    def execute_job(self, job: Job, queue: Queue) -> None:
        reasons = rq_compat.refusal_reasons(job, ALLOWED_FUNCTIONS)
        if reasons:
            # Whoever can write to Redis can enqueue a job; RQ would import and call whatever dotted
            # path it names -- its function, its callbacks -- and send its webhooks. Only jobs as spar
            # enqueues them run here; any other is failed, with the reasons, before any of it runs.
            log.error("refused job", extra={"event": "worker.refused", "job": job.id, "reasons": reasons})
            rq_compat.disarm(job, reasons)
        self.publish(current_job=job.id)
        self._stop_beating.clear()
        beater = threading.Thread(target=self._beat, args=(job,), daemon=True, name="spar-heartbeat")
        beater.start()
        try:
            super().execute_job(job, queue)
        finally:
            if self.needs_fresh_process:  # interrupted: take no further job in this process
                rq_compat.refuse_further_jobs(self)
            self._stop_beating.set()
            beater.join(timeout=5)
            try:
                self.publish(current_job="")
            except Exception as exc:  # Redis away: the hash expires on its own, the next beat republishes
                log.warning(
                    "worker state not published", extra={"event": "worker.publish_failed", "error": str(exc)}
                )

    def kill_horse(self, sig: Any = None) -> None:
        """Stop the running job (``send_stop_job_command``): a SimpleWorker has no horse to kill.

        The job runs in this process's main thread under RQ's SIGALRM time limit; raising that
        signal ends the job now, and RQ records it as stopped because ``_stopped_job_id`` is set.
        The exception lands wherever the job happens to be -- possibly inside ``import torch`` or
        a model load, which leaves the interpreter broken (later jobs failed with ``SystemError``,
        then the process crashed) -- so the worker takes no other job in this process:
        :func:`run_worker` replaces it with a fresh one once RQ has recorded the stop.
        """
        if self.get_current_job_id():
            self.needs_fresh_process = True
            os.kill(os.getpid(), signal.SIGALRM)

    def _start_scheduler(self, burst: bool = False, *args: Any, **kwargs: Any) -> None:
        """RQ's private hook, overridden through the compat module: a spawned scheduler process."""
        rq_compat.start_scheduler(self, burst, *args, **kwargs)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.publish(current_job="")


def _redis_timeout() -> float:
    """Seconds a worker waits on one Redis reply (``SPAR_WORKER_REDIS_TIMEOUT``, default 30).

    RQ raises it to at least its blocking-dequeue timeout + 10 s. A stall longer than this makes
    RQ's loop quit; :func:`run_worker` then reconnects instead of letting the process exit.
    """
    return settings().worker_redis_timeout


def display_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: what a log line may show."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_worker(
    role: QueueName,
    redis_url: str,
    heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL,
    burst: bool = False,
    name: str | None = None,
    log_setup: Callable[[], None] | None = None,
) -> None:
    """Serve one role's queue until stopped (signal, RQ shutdown command, or ``burst`` running dry).

    A worker started before Redis (a compose or kubernetes rollout) waits for it: every reconnect
    line names the URL tried (password hidden) and, until Redis has answered once, the fix, so a
    wrong ``SPAR_REDIS_URL`` is visible in the first line of the log rather than a silent idle loop.

    RQ's work loop returns on *any* Redis error -- a timeout, a refused connection -- as if it had
    been told to stop, and its teardown may raise on the same dead connection. Here only a
    requested stop ends the process: every other end of the loop reconnects with backoff, so a
    Redis restart or a long stall costs the workers nothing (the running shard, if any, is retried
    by the scheduler and found done).
    """
    socket_timeout = _redis_timeout()
    shown = display_url(redis_url)
    connected_once = False  # until Redis answers once, the URL (not an outage) is the likely fault
    attempt = 0
    failures = 0
    previous: SparWorker | None = None  # the last loop's worker, whose scheduler may hold a lock
    while True:
        attempt += 1
        worker: SparWorker | None = None
        started = time.monotonic()
        try:
            connection = Redis.from_url(redis_url, health_check_interval=10, socket_timeout=socket_timeout)
            if previous is not None:
                _release_scheduler(previous, connection)
                previous = None
            queue = Queue(role, connection=connection, serializer=SERIALIZER, job_class=rq_compat.SparJob)
            worker = SparWorker(
                [queue],
                connection=connection,
                role=role,
                heartbeat_ttl=heartbeat_ttl,
                worker_ttl=max(heartbeat_ttl, 10),
                maintenance_interval=max(heartbeat_ttl, 10),
                name=f"{name or f'{role}-{socket.gethostname()}-{os.getpid()}'}-{attempt}",
            )
            worker.log_setup = log_setup
            worker.work(burst=burst, with_scheduler=True)
            connected_once = True  # RQ's loop registered the worker: Redis answered at this URL
            reason = "loop ended without a stop request (Redis timeout or error)"
        except (RedisConnectionError, RedisTimeoutError) as exc:
            reason = f"redis unreachable: {exc}"
        if worker is not None and worker.needs_fresh_process:
            _restart_process()
        if burst or _stop_was_requested(worker):
            return
        if worker is not None:
            previous = worker
        # Back off 1, 2, 4 ... 30 s while Redis stays away; a loop that ran a while starts over.
        failures = 1 if time.monotonic() - started > 60 else failures + 1
        delay = min(2.0 ** (failures - 1), 30.0)
        extra: dict[str, object] = {
            "event": "worker.reconnect",
            "reason": reason,
            "attempt": attempt,
            "delay_s": delay,
            "url": shown,
        }
        if not connected_once:
            extra["hint"] = (
                f"never reached Redis at {shown} since start: set SPAR_REDIS_URL (or --queue-url) to "
                "redis://[user:password@]host:port/db of a running Redis, or start Redis first"
            )
        log.warning("worker reconnecting", extra=extra)
        _sleep_or_stop(delay)


def _release_scheduler(worker: SparWorker, connection: Redis) -> None:
    """Stop an ended loop's scheduler process and free its queue locks (Redis is reachable again).

    The next loop's worker starts a scheduler under a new name, which cannot take a lock the old
    one still holds; RQ's teardown, run while Redis was away, may have failed to release it, and
    then no scheduled retry of the queue ran until the lock expired (61 s).
    """
    scheduler = worker.scheduler
    if scheduler is None:
        return
    process = rq_compat.scheduler_process(scheduler)
    if process is not None and process.is_alive():
        process.terminate()
        process.join(timeout=10)
    released = rq_compat.release_scheduler_locks(scheduler, connection)
    if released:
        log.info(
            "released the ended loop's scheduler locks",
            extra={"event": "worker.scheduler_released", "queues": released},
        )


def _sleep_or_stop(seconds: float) -> None:
    """Wait before reconnecting; SIGTERM/SIGINT now end the process at once (nothing is running).

    RQ's handlers stay installed after its loop returns and would raise ``StopRequested`` here.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_now)
    time.sleep(seconds)


def _exit_now(signum: int, frame: object) -> None:
    log.info("stopped while reconnecting", extra={"event": "worker.stop", "signal": signum})
    raise SystemExit(0)


def _stop_was_requested(worker: SparWorker | None) -> bool:
    """Whether RQ's loop ended because it was asked to (SIGTERM/SIGINT, shutdown command)."""
    if worker is None:
        return False
    return rq_compat.stop_requested(worker)


def _restart_process() -> None:
    """Replace this process by a fresh run of the same command line (same pid, clean interpreter)."""
    log.warning("restarting after an interrupted job", extra={"event": "worker.restart"})
    try:  # the spawn helper process would otherwise outlive the exec as a zombie child
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._stop()
    except Exception as exc:  # a leftover helper process is harmless; say so and restart anyway
        log.warning(
            "resource tracker not stopped", extra={"event": "worker.tracker_stop_failed", "error": str(exc)}
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
