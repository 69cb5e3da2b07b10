"""Each RQ private that ``shared.runtime.rq_compat`` relies on still exists and behaves as it assumes.

An RQ upgrade that renames or changes one of them fails here, by name, instead of breaking the
worker's shutdown or retry handling at run time.
"""

from __future__ import annotations

import inspect
import re
import subprocess
from multiprocessing.process import BaseProcess

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler

from shared.runtime import rq_compat
from workers.worker import SparWorker


@pytest.fixture()
def redis(private_redis: tuple[subprocess.Popen, int]) -> Redis:
    return Redis(port=private_redis[1])


def test_the_worker_privates_exist_with_their_initial_values(redis: Redis) -> None:
    worker = SimpleWorker([Queue("compat", connection=redis)], connection=redis)
    for name in rq_compat.PRIVATE_WORKER_ATTRIBUTES:
        assert hasattr(worker, name), f"rq.Worker no longer has {name}"
    assert worker._stop_requested is False and worker._shutdown_requested_date is None
    assert rq_compat.stop_requested(worker) is False


def test_refusing_further_jobs_is_what_a_warm_shutdown_sets(redis: Redis) -> None:
    worker = SimpleWorker([Queue("compat", connection=redis)], connection=redis)
    rq_compat.refuse_further_jobs(worker)
    assert rq_compat.stop_requested(worker)
    fresh = SimpleWorker([Queue("compat2", connection=redis)], connection=redis)
    with pytest.raises(StopRequested):  # idle: RQ's warm-shutdown path stops at once ...
        fresh.request_stop(None, None)
    assert rq_compat.stop_requested(fresh)  # ... having set what stop_requested reads


def test_start_scheduler_still_has_the_signature_spar_overrides() -> None:
    for name in rq_compat.PRIVATE_WORKER_METHODS:
        assert callable(getattr(SimpleWorker, name, None)), f"rq.Worker no longer has {name}()"
    params = list(inspect.signature(SimpleWorker._start_scheduler).parameters)
    assert params == ["self", "burst", "logging_level", "date_format", "log_format"]
    assert SparWorker._start_scheduler is not SimpleWorker._start_scheduler


def test_scheduler_privates_and_a_spawned_scheduler_that_releases_its_locks(redis: Redis) -> None:
    queue = Queue("compat", connection=redis)
    plain = RQScheduler([queue], connection=redis)
    for name in rq_compat.PRIVATE_SCHEDULER_ATTRIBUTES:
        assert hasattr(plain, name), f"rq.RQScheduler no longer has {name}"
    assert rq_compat.scheduler_process(plain) is None

    worker = SimpleWorker([queue], connection=redis)
    rq_compat.start_scheduler(worker)
    scheduler = worker.scheduler
    assert isinstance(scheduler, rq_compat.SparScheduler)
    assert scheduler.acquired_locks == {"compat"}
    process = rq_compat.scheduler_process(scheduler)
    try:
        assert isinstance(process, BaseProcess) and process.is_alive()
        assert scheduler.status == RQScheduler.Status.STARTED
    finally:
        process.terminate()
        process.join(timeout=10)
    lock = scheduler.get_locking_key("compat")
    assert redis.exists(lock)
    assert rq_compat.release_scheduler_locks(
        scheduler, Redis(port=redis.connection_pool.connection_kwargs["port"])
    ) == ["compat"]
    assert not redis.exists(lock)


def test_burst_scheduling_takes_and_returns_the_lock_without_a_process(redis: Redis) -> None:
    queue = Queue("burst", connection=redis)
    worker = SimpleWorker([queue], connection=redis)
    rq_compat.start_scheduler(worker, burst=True)
    assert rq_compat.scheduler_process(worker.scheduler) is None
    assert not redis.exists(worker.scheduler.get_locking_key("burst"))


def test_the_job_hash_fields_refusal_reads_are_where_rq_stores_each_hazard(redis: Redis) -> None:
    """``refusal_reasons`` reads RQ's storage fields (``JOB_HAZARD_FIELDS``) from the job's hash."""
    from rq import Callback, Repeat
    from rq.webhook import Webhook

    queue = Queue("compat", connection=redis)
    parent = queue.enqueue("workers.jobs.noop")
    job = queue.enqueue(
        "workers.jobs.noop",
        on_success=Callback("os.getcwd"),
        on_failure=Callback("os.getpid"),
        on_stopped=Callback("os.getppid"),
        webhooks=[Webhook("http://127.0.0.1:9/x", "finished")],
        depends_on=parent,
        repeat=Repeat(times=2),
    )
    stored = redis.hgetall(job.key)
    for field in rq_compat.JOB_HAZARD_FIELDS:
        assert stored.get(field.encode()), f"RQ no longer stores {field} in a job's hash"
    reasons = rq_compat.refusal_reasons(job, frozenset({"workers.jobs.noop"}))
    assert len(reasons) == len(rq_compat.JOB_HAZARD_FIELDS)
    plain = queue.enqueue("workers.jobs.noop")
    assert rq_compat.refusal_reasons(plain, frozenset({"workers.jobs.noop"})) == []


def test_the_callback_name_privates_hold_what_rq_stores_and_imports(redis: Redis) -> None:
    """``disarm`` clears these so that RQ, saving the failed job, stores no callback name."""
    from rq import Callback
    from rq.job import Job

    job = Queue("compat", connection=redis).enqueue("workers.jobs.noop", on_success=Callback("os.getcwd"))
    job = Job.fetch(job.id, connection=redis)
    assert [getattr(job, name) for name in rq_compat.PRIVATE_JOB_ATTRIBUTES] == ["os.getcwd", None, None]
    rq_compat.disarm(job, ["test"])
    assert all(getattr(job, name) is None for name in rq_compat.PRIVATE_JOB_ATTRIBUTES)
    assert job.to_dict()["success_callback_name"] == "" and job.success_callback is None
    assert not any(redis.hget(job.key, f) for f in rq_compat.JOB_HAZARD_FIELDS)
    assert job.func_name == "workers.jobs.refused" and job.args == [f"refused job {job.id}: test"]


def test_rq_reaches_callbacks_and_webhooks_only_through_what_spar_job_overrides() -> None:
    """SparJob overrides these members; RQ's worker, queue and registry call nothing else for them."""
    import rq.job
    import rq.queue
    import rq.registry
    import rq.worker.base
    import rq.worker.worker_classes

    for name in rq_compat.JOB_PUBLIC_HOOKS:
        assert name in vars(rq_compat.SparJob), name
        assert hasattr(rq.job.Job, name), f"rq.Job no longer has {name}"
    # every place RQ runs a callback or sends a webhook goes through these names
    private_uses = re.compile(r"\._(success|failure|stopped)_callback\(|\.webhooks\b.*\.send\(")
    for module in (rq.worker.base, rq.worker.worker_classes, rq.queue, rq.registry):
        source = inspect.getsource(module)
        assert not private_uses.search(source), module.__name__
    job_source = inspect.getsource(rq.job.Job)
    assert job_source.count("webhook.send(") == 1  # only in send_webhooks
