"""A job someone else put in a spar queue runs nothing: not its function, callbacks or webhooks.

Whoever can write to Redis can enqueue an RQ job. RQ imports and calls the dotted paths a job names
-- its function, and its ``on_success``/``on_failure``/``on_stopped`` callbacks, also when a
registry cleanup finds it abandoned -- and sends its webhooks. A spar worker refuses every job that
is not exactly what spar enqueues (one of its job functions, no callbacks, webhooks, dependencies or
repeats) and fails it with the reasons, before any of it runs. Each "attacker" job below would
write a marker file or call a local HTTP server if any part of it ran; the controls show that RQ's
own worker and registry do run them.

Everything runs in-process against a private redis-server (a burst worker: it works the queue dry
and returns), about 10 s in all.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Callback, Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.webhook import Webhook

from shared.runtime.queue import SERIALIZER
from shared.runtime import rq_compat
from workers.worker import run_worker

ROLE = "actor"
MARKER_CALLBACK = Callback("test_job_refusal.write_marker")


# --------------------------------------------------------------------------- the attacker's callbacks


def write_marker(job: Job, connection: Redis, *args: Any) -> None:
    """A callback that leaves a trace: the file named in the job's meta."""
    Path(job.meta["marker"]).write_text(f"callback of {job.id} ran")


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture()
def redis(private_redis: tuple[subprocess.Popen, int]) -> Redis:
    return Redis(port=private_redis[1])


@pytest.fixture()
def queue(redis: Redis) -> Queue:
    return Queue(ROLE, connection=redis, serializer=SERIALIZER)


class Hooks:
    """A local HTTP server that records every request (where a webhook would land)."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST = _record

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture()
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def work(redis: Redis) -> None:
    """A spar worker in this process until the queue is empty (what ``spar worker`` runs)."""
    port = redis.connection_pool.connection_kwargs["port"]
    run_worker(ROLE, f"redis://127.0.0.1:{port}/0", heartbeat_ttl=5, burst=True, name="refusal")


def failure_text(job: Job) -> str:
    result = job.latest_result()
    return (result.exc_string if result else None) or ""


# --------------------------------------------------------------------------------------------- tests

ATTACKS: dict[str, dict[str, Any]] = {
    "on_success": {"on_success": MARKER_CALLBACK},
    "on_failure": {"on_failure": MARKER_CALLBACK},
    "on_stopped": {"on_stopped": MARKER_CALLBACK},
    "all callbacks, with retries": {
        "on_success": MARKER_CALLBACK,
        "on_failure": MARKER_CALLBACK,
        "retry": Retry(max=3),
    },
}
REASONS = {
    "on_success": "on_success callback",
    "on_failure": "on_failure callback",
    "on_stopped": "on_stopped callback",
    "all callbacks, with retries": "on_failure callback",
}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("function", ["workers.jobs.noop", "os.getcwd"])
def test_a_job_carrying_callbacks_is_failed_and_no_callback_runs(
    attack: str, function: str, queue: Queue, redis: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    job = queue.enqueue(function, meta={"marker": str(marker)}, **ATTACKS[attack])
    work(redis)
    assert not marker.exists(), f"{marker.read_text()}: a stored callback ran in the worker"
    assert job.get_status(refresh=True) == JobStatus.FAILED
    text = failure_text(job)
    assert "PermissionError" in text and f"refused job {job.id}" in text, text
    assert REASONS[attack] in text and "test_job_refusal.write_marker" in text, text
    if function == "os.getcwd":
        assert "'os.getcwd'" in text and "spar's job functions" in text, text
    stored = Job.fetch(job.id, connection=redis, serializer=SERIALIZER)
    assert not stored.retries_left and not queue.scheduled_job_registry.get_job_ids()  # never retried
    assert stored.func_name == "workers.jobs.refused"
    fields = redis.hgetall(job.key)  # the failed job keeps no callback for anyone to run later
    assert not any(fields.get(f.encode()) for f in ("success_callback_name", "failure_callback_name"))


def test_a_job_carrying_webhooks_is_failed_without_a_request(
    queue: Queue, redis: Redis, hooks: Hooks, tmp_path: Path
) -> None:
    job = queue.enqueue(
        "workers.jobs.noop",
        webhooks=[Webhook(f"{hooks.url}/finished", "finished"), Webhook(f"{hooks.url}/failed", "failed")],
    )
    work(redis)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    text = failure_text(job)
    assert "webhooks" in text and hooks.url in text, text
    assert hooks.hits == [], "a stored webhook was sent"
    assert not redis.hexists(job.key, "webhooks")


def test_a_job_with_a_dependency_or_repeats_is_refused(queue: Queue, redis: Redis) -> None:
    parent = queue.enqueue("workers.jobs.noop")
    work(redis)
    assert parent.get_status(refresh=True) == JobStatus.FINISHED
    child = queue.enqueue("workers.jobs.noop", depends_on=parent)  # met: enqueued at once
    from rq import Repeat

    repeating = queue.enqueue("workers.jobs.noop", repeat=Repeat(times=3))
    work(redis)
    assert child.get_status(refresh=True) == JobStatus.FAILED
    assert "dependencies" in failure_text(child) and parent.id in failure_text(child)
    assert repeating.get_status(refresh=True) == JobStatus.FAILED
    assert "repeats" in failure_text(repeating)
    assert queue.count == 0 and not queue.scheduled_job_registry.get_job_ids()  # nothing repeats


def test_spar_jobs_still_run_next_to_refused_ones(queue: Queue, redis: Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = queue.enqueue("workers.jobs.noop", meta={"marker": str(marker)}, on_success=MARKER_CALLBACK)
    plain = queue.enqueue("workers.jobs.noop", kwargs={"payload": {}})
    work(redis)
    assert hostile.get_status(refresh=True) == JobStatus.FAILED and not marker.exists()
    assert plain.get_status(refresh=True) == JobStatus.FINISHED and plain.return_value() == {"ok": True}


def test_an_abandoned_job_s_failure_callback_is_not_run_by_registry_cleanup(
    queue: Queue, redis: Redis, tmp_path: Path
) -> None:
    """RQ's registry cleanup (the worker's maintenance, spar's scheduler tick) runs the on_failure
    callback of a job it finds abandoned: a job planted in the started registry must run nothing."""
    from services.scheduler import Scheduler

    marker = tmp_path / "pwned"
    for cleaner in ("scheduler", "worker"):
        job = queue.enqueue("workers.jobs.noop", meta={"marker": str(marker)}, on_failure=MARKER_CALLBACK)
        queue.remove(job)
        redis.zadd(StartedJobRegistry(ROLE, connection=redis).key, {f"{job.id}:planted": 1})  # long expired
        if cleaner == "scheduler":
            Scheduler(redis).tick()
        else:
            work(redis)  # a worker's first loop runs the registry maintenance
        assert job.get_status(refresh=True) == JobStatus.FAILED, cleaner
        assert not marker.exists(), f"{cleaner}: the planted job's on_failure callback ran"


# ------------------------------------------------------------------------- controls: what RQ alone does


def test_control_rq_s_own_worker_runs_stored_callbacks_and_webhooks(
    queue: Queue, redis: Redis, hooks: Hooks, tmp_path: Path
) -> None:
    """Without spar's refusal the same attacker job runs its callback and sends its webhook: the
    tests above would see it (the callback is importable from the worker, the server reachable)."""
    marker = tmp_path / "pwned"
    queue.enqueue(
        "workers.jobs.noop",
        meta={"marker": str(marker)},
        on_success=MARKER_CALLBACK,
        webhooks=[Webhook(f"{hooks.url}/finished", "finished")],
    )
    SimpleWorker([queue], connection=redis, serializer=SERIALIZER).work(burst=True)
    assert marker.exists() and hooks.hits == ["/finished"]


def test_control_rq_s_registry_cleanup_runs_an_abandoned_job_s_callback(
    queue: Queue, redis: Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    job = queue.enqueue("workers.jobs.noop", meta={"marker": str(marker)}, on_failure=MARKER_CALLBACK)
    queue.remove(job)
    registry = StartedJobRegistry(ROLE, connection=redis, serializer=SERIALIZER)
    redis.zadd(registry.key, {f"{job.id}:planted": 1})
    registry.cleanup()
    assert marker.exists()
    # ... and with spar's job class it does not
    marker.unlink()
    job = queue.enqueue("workers.jobs.noop", meta={"marker": str(marker)}, on_failure=MARKER_CALLBACK)
    queue.remove(job)
    redis.zadd(registry.key, {f"{job.id}:planted": 1})
    StartedJobRegistry(ROLE, connection=redis, serializer=SERIALIZER, job_class=rq_compat.SparJob).cleanup()
    assert job.get_status(refresh=True) == JobStatus.FAILED and not marker.exists()
