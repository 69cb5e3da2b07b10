"""Fault drills on the real service: Redis, the API (uvicorn) and workers as processes, tiny model.

Each test breaks one thing a cluster will see -- a worker killed mid-shard, the API restarted,
Redis unreachable, a shard that always fails, a cancel, a job naming a foreign function -- and
checks that the run still ends the way it should. Where a run succeeds after a fault, its files
are compared byte for byte with a clean in-process run of the same config (same seeds, same
output): that equality is what makes the scheduler's retries and resumes safe to rely on.

Every test uses its own Redis database (12-15 on the project's Redis) or its own redis-server, and
its own data root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from service_harness import (
    PROMPTS,
    SEARCH_STAGES,
    Stack,
    data_root,
    fresh_redis_url,
    tiny_run_body,
    variant_prompts,
)

from workers.artifacts import RunPaths, read_json
from workers.queue import QUEUES, SERIALIZER, job_id, worker_key
from workers.stages import num_shards


def run_body(shard_size: int, votes: int = 3, **overrides: object) -> dict:
    """The search stages only (training adds nothing to these drills but minutes)."""
    return tiny_run_body(
        "faults",
        seed=7,
        shard_size=shard_size,
        responses=4,
        votes=votes,
        new_tokens=(24, 64, 64),
        **overrides,
    )


# ----- helpers ------------------------------------------------------------------------------------
def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, stack: Stack | None = None
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` (and the logs) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = stack.tail_logs() if stack else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def fetch(redis: Redis, jid: str) -> Job | None:
    try:
        return Job.fetch(jid, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return None


def started_job(stack: Stack, redis: Redis, run_id: str, stage: str, shards: int, timeout: float = 90) -> Job:
    """The first job of ``stage`` seen running (found by its deterministic id)."""

    def running() -> Job | None:
        for shard in range(shards):
            job = fetch(redis, job_id(run_id, 0, stage, shard))
            if job is not None and job.get_status(refresh=True) == JobStatus.STARTED:
                return job
        return None

    return wait_until(running, timeout, f"a {stage} job of {run_id} to start", stack)  # type: ignore[return-value]


def create(client: httpx.Client, body: dict) -> tuple[str, RunPaths]:
    created = client.post("/v1/runs", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"], RunPaths(Path(created.json()["run_dir"]))


def outputs(run_dir: Path) -> dict[str, bytes]:
    """Every data file a run wrote (shard outputs, pairs, RFT mix), by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.glob("iter_*/*/*.jsonl"))}


def clean_outputs(stack: Stack, body: dict, runs_dir: Path) -> dict[str, bytes]:
    """The same config run in-process by the local executor, with the workers' thread count."""
    import torch

    from services.local import LocalExecutor
    from services.runs import create_run, resolve_paths
    from shared.config import RunConfig

    config = resolve_paths(RunConfig.model_validate(body), stack.root.resolve())
    paths = create_run(config, runs_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with OMP_NUM_THREADS=1: same kernels, same bits
    try:
        LocalExecutor.for_run(paths).run()
    finally:
        torch.set_num_threads(threads)
    return outputs(paths.root)


def assert_complete(paths: RunPaths) -> None:
    """Each stage has exactly one completion record per shard, a manifest counting them, no temp files."""
    for stage in SEARCH_STAGES:
        total = num_shards(paths, stage)
        manifest = read_json(paths.manifest(0, stage))
        assert manifest["shards"] == total, (stage, manifest)
        assert len(list(paths.stage_dir(0, stage).glob("shard_*.done.json"))) == total, stage
        assert not list(paths.stage_dir(0, stage).glob(".*.tmp")), f"temp files left in {stage}"


def victim_of(stack: Stack, redis: Redis, run_id: str, pids: set[int]) -> tuple[Job, int]:
    """A running judge job and its worker's pid, preferring a worker that has a scheduler fork."""
    candidates: list[tuple[Job, int]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        candidates = []
        for shard in range(2):
            job = fetch(redis, job_id(run_id, 0, "judge", shard))
            if job is None or job.get_status(refresh=True) != JobStatus.STARTED or not job.worker_name:
                continue
            pid = int(redis.hget(worker_key(job.worker_name), "pid") or 0)
            if pid in pids:
                candidates.append((job, pid))
        if len(candidates) == 2 or (candidates and time.monotonic() > deadline - 2):
            break
        time.sleep(0.05)
    assert candidates, f"no running judge job on the refiner workers\n{stack.tail_logs()}"
    return next((c for c in candidates if child_pids(c[1])), candidates[0])


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (RQ forks each worker's scheduler), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        out += [int(x) for x in text.split()]
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture()
def make_stack(tmp_path: Path, tiny_model_path: Path) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks (data root with ``n`` prompts, a Redis URL); every process is killed after."""
    made: list[Stack] = []

    def make(redis_url: str, n_prompts: int) -> Stack:
        stack = Stack(
            root=data_root(tmp_path, tiny_model_path, variant_prompts(n_prompts)), redis_url=redis_url
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


# ----- the drills ---------------------------------------------------------------------------------
def test_worker_killed_mid_shard_is_retried_by_another_and_output_matches_a_clean_run(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    body = run_body(shard_size=16, votes=9)
    stack = make_stack(fresh_redis_url(12), 32)
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    refiners = [stack.start_worker("refiner") for _ in range(2)]
    stack.start_worker("actor")
    stack.start_worker("train")
    with stack.client() as c:
        run_id, paths = create(c, body)
        started_job(stack, redis, run_id, "judge", 2)
        # Prefer the worker whose fork runs the refiner queue's RQ scheduler: the retry is a
        # scheduled job, so the survivor must also take over scheduling (the harder case).
        job, pid = victim_of(stack, redis, run_id, {p.pid for p in refiners})
        victim_name = job.worker_name
        victim = next(p for p in refiners if p.pid == pid)
        forks = child_pids(pid)
        os.kill(pid, signal.SIGKILL)
        victim.wait(timeout=10)
        shard = int(job.id.rsplit("-", 1)[1])
        assert not paths.shard_done(0, "judge", shard).exists(), "the shard finished before the kill"
        final = stack.wait_for(run_id, timeout=150)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    retried = fetch(redis, job.id)
    assert retried is not None and retried.get_status() == JobStatus.FINISHED
    assert retried.worker_name not in ("", None, victim_name), "the shard was not rerun by the other worker"
    assert retried.retries_left == 2, "one retry (the abandoned execution) was used"
    wait_until(lambda: not any(alive(p) for p in forks), 15, "the killed worker's scheduler fork to exit")
    assert_complete(paths)
    assert outputs(paths.root) == clean_outputs(stack, body, tmp_path / "clean")


def test_api_restarted_mid_run_the_run_goes_on_and_refine_answers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(fresh_redis_url(13), 16)
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, run_body(shard_size=8, votes=7))
    started_job(stack, redis, run_id, "judge", 2)
    stack.stop_api(signal.SIGKILL)  # no shutdown hook runs: the scheduler lock is left to expire
    time.sleep(1.0)
    stack.start_api()  # same port
    final = stack.wait_for(run_id, timeout=120)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert_complete(paths)

    request = {"run_id": run_id, "prompt": PROMPTS[1], "response": "Apple, Banana, cherry."}
    with stack.client() as c:
        queued = c.post("/v1/refine", json=request | {"wait_s": 0})
        if queued.status_code == 202:  # not done yet: poll the URL it gives
            poll = queued.json()["poll"]
            wait_until(lambda: c.get(poll).status_code != 202, 60, "the refinement job", stack)
            queued = c.get(poll)
        assert queued.status_code == 200, queued.text
        waited = c.post("/v1/refine", json=request | {"wait_s": 60})
        assert waited.status_code == 200, waited.text
    for answer in (queued.json(), waited.json()):
        assert answer["status"] == "finished"
        result = answer["result"]
        assert result["refiner_version"] == "v0"  # search stages only: the refiner was not trained
        assert isinstance(result["response"], str) and result["response"]
        assert result["refined"] in (True, False)


def test_redis_unreachable_for_seconds_workers_and_api_reconnect(
    make_stack: Callable[..., Stack], private_redis: tuple[subprocess.Popen, int], tmp_path: Path
) -> None:
    server, port = private_redis
    body = run_body(shard_size=8, votes=7)
    stack = make_stack(fresh_redis_url(0, port=port), 16)
    # Workers wait at most 11 s on a Redis reply here (1 s asked; RQ raises it to its dequeue
    # timeout + 10 s), so the pause below also ends RQ's work loop: the worker must reconnect.
    stack.env_extra["SPAR_WORKER_REDIS_TIMEOUT"] = "1"
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, body)
    started_job(stack, redis, run_id, "judge", 2)
    # A stopped server accepts nothing and answers nothing: an unreachable Redis, but with its data
    # kept. 14 s is past the API's 5 s socket timeout (calls time out, not only stall), past the
    # workers' 3 s heartbeat TTL (running jobs look abandoned and get retried: no harm may come of
    # it) and past the workers' 11 s Redis timeout (RQ's loop quits; the process must not).
    os.kill(server.pid, signal.SIGSTOP)
    time.sleep(float(os.environ.get("SPAR_TEST_REDIS_PAUSE", "14")))
    os.kill(server.pid, signal.SIGCONT)
    final = stack.wait_for(run_id, timeout=150)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert all(p.poll() is None for _, p in stack.workers), "a worker died instead of reconnecting"
    logs = "".join(path.read_text() for path in stack.logs if path.name.startswith("worker-"))
    assert "worker.reconnect" in logs, "the pause never ended a worker loop: the test lost its point"
    assert_complete(paths)
    # A job that looked abandoned during the pause has a retry scheduled (5 s) even though its
    # shard got done: it must run (a no-op) soon, which needs the scheduler lock of the worker loop
    # the pause ended to be freed (it used to wait out its 61 s expiry).
    jobs = [job_id(run_id, 0, stage, k) for stage in SEARCH_STAGES for k in range(num_shards(paths, stage))]

    def unfinished() -> list[tuple[str, str]]:
        statuses = [(j, fetch(redis, j)) for j in jobs]
        return [
            (j, job.get_status() if job else None)
            for j, job in statuses
            if not job or job.get_status() != JobStatus.FINISHED
        ]

    deadline = time.monotonic() + 30
    while unfinished() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not unfinished(), f"jobs left unfinished: {unfinished()}\n{stack.tail_logs()}"
    assert outputs(paths.root) == clean_outputs(stack, body, tmp_path / "clean")


def test_a_shard_that_always_fails_fails_the_run_and_resume_redoes_only_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(fresh_redis_url(14), 4)
    stack.env_extra["SPAR_FAIL_SHARDS"] = "judge:1"
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, run_body(shard_size=2))
        final = stack.wait_for(run_id, timeout=90)
        assert final["status"] == "failed", f"{final}\n{stack.tail_logs()}"
        assert "stage judge" in final["error"] and "shard 1" in final["error"], final["error"]
        assert "injected failure of judge shard 1" in final["error"], final["error"]
        kept = paths.shard_done(0, "judge", 0)
        assert kept.exists() and paths.shard(0, "judge", 0).exists(), "the good shard's output was lost"
        assert not paths.shard_done(0, "judge", 1).exists() and not paths.manifest(0, "judge").exists()
        stamp = kept.stat().st_mtime_ns

        stack.stop_workers()
        del stack.env_extra["SPAR_FAIL_SHARDS"]
        stack.start_workers()
        resumed = c.post(f"/v1/runs/{run_id}/resume")
        assert resumed.status_code == 200, resumed.text
        final = stack.wait_for(run_id, timeout=90)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert final["error"] is None
    assert kept.stat().st_mtime_ns == stamp, "judge shard 0 was recomputed"
    assert_complete(paths)


def test_cancel_stops_the_run_and_resume_finishes_it(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(fresh_redis_url(15), 16)
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, run_body(shard_size=8, votes=9))
        started_job(stack, redis, run_id, "judge", 2)
        sample_done = {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)}
        cancelled = c.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 200  # cancelling twice is harmless

        def settled() -> bool:
            return all(
                StartedJobRegistry(q, connection=redis, serializer=SERIALIZER).count == 0 for q in QUEUES
            )

        wait_until(settled, 30, "the running shards to stop", stack)
        time.sleep(2.0)  # several scheduler ticks: none may enqueue anything or revive the run
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
        for q in QUEUES:
            assert Queue(q, connection=redis, serializer=SERIALIZER).count == 0, q
            assert ScheduledJobRegistry(q, connection=redis, serializer=SERIALIZER).count == 0, q
        for stage in ("refine", "assemble"):
            for shard in range(num_shards(paths, stage)):
                assert fetch(redis, job_id(run_id, 0, stage, shard)) is None, (stage, shard)
        assert not paths.manifest(0, "judge").exists()
        assert {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)} == sample_done

        resumed = c.post(f"/v1/runs/{run_id}/resume")
        assert resumed.status_code == 200, resumed.text
        final = stack.wait_for(run_id, timeout=120)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)} == sample_done
    assert_complete(paths)


def test_a_job_naming_a_foreign_function_is_refused(
    make_stack: Callable[..., Stack], private_redis: tuple[subprocess.Popen, int], tmp_path: Path
) -> None:
    stack = make_stack(fresh_redis_url(0, port=private_redis[1]), 1)  # Redis has 16 databases: all used
    redis = Redis.from_url(stack.redis_url)
    worker = stack.start_worker("actor")
    queue = Queue("actor", connection=redis, serializer=SERIALIZER)
    markers = [tmp_path / "pwned-os", tmp_path / "pwned-subprocess"]
    hostile = [
        queue.enqueue("os.system", args=[f"touch {markers[0]}"]),
        queue.enqueue("subprocess.run", args=[["touch", str(markers[1])]]),
    ]
    for job in hostile:
        failed = lambda job=job: job.get_status(refresh=True) == JobStatus.FAILED  # noqa: E731
        wait_until(failed, 60, f"{job.id} to fail", stack)
        result = job.latest_result()
        text = (result.exc_string if result else None) or job.exc_info or ""
        assert "PermissionError" in text and "spar's job functions" in text, text
    assert not any(m.exists() for m in markers), "a foreign function was executed"
    ok = queue.enqueue("workers.jobs.noop")  # the worker refused the jobs, and is still serving
    wait_until(lambda: ok.get_status(refresh=True) == JobStatus.FINISHED, 30, "the noop job", stack)
    assert ok.return_value() == {"ok": True}
    assert worker.poll() is None
