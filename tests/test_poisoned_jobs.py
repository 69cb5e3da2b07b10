"""Any job hash in Redis: the scheduler keeps ticking, workers keep working, logs stay JSON (issue 23).

A job hash RQ cannot parse (``created_at: not-a-date``) once stopped every scheduler tick for good
(planted in the started registry) and sent a worker into a crash-reconnect loop that left RQ's
cleanup lock held for 15 minutes (planted in a queue); ``/readyz`` still said ok. A job description
holding newlines wrote forged lines into the worker's text log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from run_fixtures import new_run
from service_harness import BIN

from services.api import Settings, create_app
from services.scheduler import TICK_KEY, RunStatus, Scheduler
from shared.config import RunConfig
from shared.runtime.confinement import OutsideRootError, check_config_paths
from shared.runtime.queue import SERIALIZER, job_id
from workers.worker import run_worker

TOKEN = "poisoned-jobs-token-0123456789abcdef"


@pytest.fixture()
def redis(private_redis: tuple[subprocess.Popen, int]) -> Redis:
    return Redis(port=private_redis[1])


def plant(redis: Redis, job: str, queue: str, **fields: str) -> None:
    """The issue's hash: nothing RQ wrote, a date it cannot parse."""
    redis.hset(
        f"rq:job:{job}",
        mapping={"data": "x", "created_at": "not-a-date", "origin": queue, "status": "started"} | fields,
    )


def a_run(tmp_path: Path, name: str = "poison", prompts: int = 3):
    texts = [f"p{k}" for k in range(prompts)]
    return new_run(tmp_path, name, texts, runs=tmp_path / "runs", shard_size=1, stages=["sample", "judge"])


def test_a_poisoned_job_in_the_started_registry_never_stops_the_scheduler(
    redis: Redis, tmp_path: Path
) -> None:
    plant(redis, "p", "train")
    redis.zadd("rq:wip:train", {"p:x": 1})  # expired long ago: the next cleanup fetches it
    paths = a_run(tmp_path)
    scheduler = Scheduler(redis)
    scheduler.register(paths)
    scheduler.tick()  # raised ValueError here, on every tick
    assert redis.llen("rq:queue:actor") == 3  # the run was advanced: its shards are queued
    assert scheduler.state(paths.run_id)["status"] == RunStatus.RUNNING
    assert redis.get(TICK_KEY) is not None
    assert redis.zcard("rq:wip:train") == 0
    assert redis.hget("rq:job:p", "status") == b"failed"  # moved aside, its hash now readable
    Job.fetch("p", connection=redis, serializer=SERIALIZER)
    scheduler.tick()  # and the next tick too


def test_a_poisoned_job_in_a_queue_is_failed_with_its_reason_and_the_worker_goes_on(
    redis: Redis,
) -> None:
    queue = Queue("actor", connection=redis, serializer=SERIALIZER)
    plant(redis, "q", "actor", status="queued")
    redis.rpush(queue.key, "q")
    good = queue.enqueue("workers.jobs.noop")
    port = redis.connection_pool.connection_kwargs["port"]
    run_worker("actor", f"redis://127.0.0.1:{port}/0", heartbeat_ttl=5, burst=True, name="poison")
    assert good.get_status(refresh=True) == JobStatus.FINISHED
    bad = Job.fetch("q", connection=redis, serializer=SERIALIZER)
    assert bad.get_status() == JobStatus.FAILED
    result = bad.latest_result()
    assert result is not None and "stored fields cannot be read" in (result.exc_string or "")
    assert redis.exists("rq:clean_registries:actor") == 0  # RQ's cleanup lock is not left held


def test_readyz_says_not_ready_when_no_scheduler_tick_completed_recently(
    redis: Redis, tmp_path: Path
) -> None:
    port = redis.connection_pool.connection_kwargs["port"]
    settings = Settings(
        api_token=TOKEN,
        redis_url=f"redis://127.0.0.1:{port}/0",
        data_root=tmp_path,
        scheduler=True,
        scheduler_interval=60,  # one tick at start, then none for a minute
        scheduler_stale_s=30,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while redis.get(TICK_KEY) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"ok": True}
        redis.set(TICK_KEY, f"{time.time() - 120:.3f}")  # as if every tick since had failed
        stale = client.get("/readyz")
        assert stale.status_code == 503 and "scheduler" in stale.json()["scheduler"], stale.text
        redis.delete(TICK_KEY)
        never = client.get("/readyz").json()["scheduler"]
        assert never.startswith("the last completed scheduler tick was never"), never


def test_a_run_name_with_a_dot_is_refused_by_the_config_and_the_queue() -> None:
    from pydantic import ValidationError

    base = {"prompts": "p", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}
    with pytest.raises(ValidationError, match="name"):
        RunConfig.model_validate(base | {"name": "exp.1"})
    with pytest.raises(ValueError, match="may hold only"):
        job_id("exp.1-20260101-000000-abcd", 0, "sample", 0)
    assert job_id("exp-1-20260101-000000-abcd", 0, "sample", 0) == "exp-1-20260101-000000-abcd-0-sample-0"


def test_a_failed_shard_fails_the_run_and_cancel_stops_every_waiting_job(
    redis: Redis, tmp_path: Path
) -> None:
    """The batched scheduler still sees a failure (the failed registry changed) and cancels in bulk."""
    paths = a_run(tmp_path, prompts=4)
    scheduler = Scheduler(redis)
    scheduler.register(paths)
    scheduler.tick()
    assert redis.llen("rq:queue:actor") == 4
    scheduler.tick()  # nothing changed: nothing enqueued twice
    assert redis.llen("rq:queue:actor") == 4
    job = Job.fetch(job_id(paths.run_id, 0, "sample", 2), connection=redis, serializer=SERIALIZER)
    queue = Queue("actor", connection=redis, serializer=SERIALIZER)
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(job, exc_string="boom: shard 2 failed")
    scheduler.tick()
    state = scheduler.state(paths.run_id)
    assert state["status"] == RunStatus.FAILED and "shard 2" in state["error"], state
    scheduler.resume(paths.run_id, paths)
    scheduler.tick()  # the failed shard's job was dropped and is enqueued again
    assert redis.llen("rq:queue:actor") == 4
    assert scheduler.cancel(paths.run_id, paths) is True
    assert redis.llen("rq:queue:actor") == 0
    assert scheduler.cancel(paths.run_id, paths) is False  # a finished run is not cancelled again


def test_worker_logs_are_json_and_a_job_description_cannot_forge_lines(redis: Redis, tmp_path: Path) -> None:
    port = redis.connection_pool.connection_kwargs["port"]
    forged = '{"level": "info", "logger": "spar.worker", "msg": "forged"}'
    Queue("actor", connection=redis, serializer=SERIALIZER).enqueue(
        "os.getcwd", description=f"innocent\n{forged}\nINFO rq.worker: forged too"
    )
    env = os.environ | {"SPAR_REDIS_URL": f"redis://127.0.0.1:{port}/0", "SPAR_DATA_ROOT": str(tmp_path)}
    done = subprocess.run(
        [str(BIN / "spar"), "worker", "--role", "actor", "--burst", "--name", "forgery"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) for r in records)
    assert not any(r.get("msg") == "forged" for r in records)
    assert any(r.get("event") == "worker.refused" for r in records), lines
    assert any("innocent\n" in json.dumps(r) or "innocent\\n" in json.dumps(r) for r in records)


def test_a_worker_refuses_a_config_whose_link_now_leaves_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "models").mkdir(parents=True)
    (root / "models" / "real").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    link = root / "models" / "current"
    link.symlink_to(root / "models" / "real")
    (root / "prompts.jsonl").write_text('{"prompt": "p"}\n')
    config = RunConfig.model_validate(
        {
            "prompts": str(root / "prompts.jsonl"),
            "actor": {"model": str(link)},  # as stored by a laxer version: the link, not its target
            "refiner": {"model": "tiny"},
        }
    )
    check_config_paths(config, root)  # inside: fine
    link.unlink()
    link.symlink_to(outside)  # retargeted after the run was created
    with pytest.raises(OutsideRootError, match="actor.model"):
        check_config_paths(config, root)


def test_the_api_stores_paths_resolved_through_links(tmp_path: Path) -> None:
    from services.runs import confine

    root = tmp_path / "data"
    (root / "models" / "real").mkdir(parents=True)
    (root / "models" / "current").symlink_to(root / "models" / "real")
    (root / "prompts.jsonl").write_text('{"prompt": "p"}\n')
    config = RunConfig.model_validate(
        {"prompts": "prompts.jsonl", "actor": {"model": "models/current"}, "refiner": {"model": "tiny"}}
    )
    stored = confine(config, root)
    assert stored.actor.model == str((root / "models" / "real").resolve())
    assert stored.refiner.model == "tiny"


def test_prompt_shards_are_streamed_and_the_shard_count_is_bounded(tmp_path: Path, monkeypatch) -> None:
    import services.runs as runs
    from shared.errors import ConfigError

    paths = a_run(tmp_path, name="ten", prompts=10)
    assert paths.num_prompt_shards() == 10
    assert json.loads(paths.config.read_text())["prompts"] == 10
    monkeypatch.setattr(runs, "MAX_SHARDS", 5)
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="more than 5 shards"):
        a_run(tmp_path / "b", name="too-many", prompts=10)
    assert not any((tmp_path / "b" / "runs").glob("*")), "a refused run leaves nothing behind"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
