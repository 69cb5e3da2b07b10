"""Each RQ private that ``workers.rq_compat`` relies on still exists and behaves as it assumes.

An RQ upgrade that renames or changes one of them fails here, by name, instead of breaking the
worker's shutdown or retry handling at run time.
"""

from __future__ import annotations

import inspect
import subprocess
from multiprocessing.process import BaseProcess

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler

from workers import rq_compat
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
