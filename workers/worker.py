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
import threading
import time
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job

from .jobs import ENGINES
from .queue import REFINE_ONE, RUN_SHARD, SERIALIZER, QueueName, worker_key

log = logging.getLogger("spar.worker")

DEFAULT_HEARTBEAT_TTL = 30
ALLOWED_FUNCTIONS = frozenset({RUN_SHARD, REFINE_ONE, "workers.jobs.noop"})


class SparWorker(SimpleWorker):
    """A SimpleWorker that heartbeats during jobs and publishes what it is doing for ``/v1/workers``."""

    def __init__(self, *args: Any, role: str, heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL, **kwargs: Any):
        kwargs.setdefault("serializer", SERIALIZER)
        super().__init__(*args, **kwargs)
        self.role = role
        self.heartbeat_ttl = heartbeat_ttl
        self._stop_beating = threading.Event()
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
            "models": ", ".join(f"{r}: {v}" for r, v in ENGINES.current.items()),
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
        if job.func_name not in ALLOWED_FUNCTIONS:
            # RQ imports whatever dotted path a job names: only spar's own job functions may run here.
            log.error("refused job", extra={"event": "worker.refused", "job": job.id, "func": job.func_name})
            job.func_name = "workers.jobs.refused"
        self.publish(current_job=job.id)
        self._stop_beating.clear()
        beater = threading.Thread(target=self._beat, args=(job,), daemon=True, name="spar-heartbeat")
        beater.start()
        try:
            super().execute_job(job, queue)
        finally:
            self._stop_beating.set()
            beater.join(timeout=5)
            try:
                self.publish(current_job="")
            except Exception:
                pass

    def kill_horse(self, sig: Any = None) -> None:
        """Stop the running job (``send_stop_job_command``): a SimpleWorker has no horse to kill.

        The job runs in this process's main thread under RQ's SIGALRM time limit; raising that
        signal ends the job now, and RQ records it as stopped because ``_stopped_job_id`` is set.
        """
        if self.get_current_job_id():
            os.kill(os.getpid(), signal.SIGALRM)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.publish(current_job="")


def run_worker(
    role: QueueName,
    redis_url: str,
    heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL,
    burst: bool = False,
    name: str | None = None,
) -> None:
    """Serve one role's queue until stopped; reconnects when Redis is briefly unreachable."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    attempt = 0
    while True:
        attempt += 1
        try:
            connection = Redis.from_url(redis_url, health_check_interval=10, socket_timeout=30)
            queue = Queue(role, connection=connection, serializer=SERIALIZER)
            worker = SparWorker(
                [queue],
                connection=connection,
                role=role,
                heartbeat_ttl=heartbeat_ttl,
                worker_ttl=max(heartbeat_ttl, 10),
                maintenance_interval=max(heartbeat_ttl, 10),
                name=f"{name or f'{role}-{socket.gethostname()}-{os.getpid()}'}-{attempt}",
            )
            worker.work(burst=burst, with_scheduler=True)
            return
        except RedisConnectionError as exc:
            log.warning(
                "redis unreachable, retrying", extra={"event": "worker.redis_down", "error": str(exc)}
            )
            time.sleep(2)
