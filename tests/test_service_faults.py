"""Fault drills on the real service: Redis, the API (uvicorn) and workers as processes, tiny model.

Each test breaks one thing a cluster will see -- a worker killed mid-shard in every stage (sample,
judge, refine, train_actor, eval), the API restarted, a cancel and resume, Redis killed and started
again from its append-only file, Redis unreachable, a shard that always fails, a job naming a
foreign function -- and checks that the run still ends the way it should. Where a run succeeds after
a fault, its data files (every shard JSONL, pairs.jsonl, rft.jsonl) are compared byte for byte with
one clean in-process run of the same config (same seeds, same output; :func:`data_digest`), and the
weights it published with the clean run's (:func:`assert_same_weights`): that equality is what makes
the scheduler's retries and resumes safe to rely on.

Every test starts its own redis-server on a free loopback port (the ``redis_server`` fixture: AOF on,
as deployed) and uses its own data root: nothing touches a Redis the test did not start.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    RedisServer,
    Stack,
    data_root,
    tiny_run_body,
    variant_prompts,
)

from shared.runtime.artifacts import RunPaths, read_json
from shared.runtime.queue import QUEUES, SERIALIZER, STAGE_QUEUE, job_id, worker_key
from shared.runtime.shards import num_shards
from shared.runtime.versions import read_metadata, version_dir
from shared.stages import pipeline
from workers.stages.train import checkpoint_dir
from workers.training.outcome import resume_point

DRILL_STAGES = ["sample", "judge", "refine", "assemble", "train_actor", "eval"]
N_PROMPTS = 24
JUDGE_ITEMS = [("hello", "HELLO"), ("yes", "YES"), ("tea", "TEA")]


def drill_body() -> dict:
    """The config of every drill that compares with the clean run: two shards of 12 prompts per
    prompt stage, a DPO training long enough to be killed after a step checkpoint (60 steps, one
    every 4), and a small eval (the tiny model, 16 IFEval prompts, a 3-item judge file the data root
    holds). Sized so that a shard on a warm worker still runs for about a second on 2 cores (the
    window a kill must land in) while a whole drill stays near 30 s."""
    body = tiny_run_body("faults", seed=7, shard_size=12, responses=4, votes=3, new_tokens=(24, 64, 64))
    for role in ("actor", "refiner"):  # small engine batches: a warm shard still takes about a second
        body[role]["hf"]["batch_size"] = 4
    return body | {
        "stages": DRILL_STAGES,
        "train_actor": {
            "max_steps": 60,
            "save_steps": 4,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 256,
            "learning_rate": 1e-4,
        },
        "evaluation": {"ifeval_limit": 16, "max_new_tokens": 24, "judge_data": "judge.jsonl"},
    }


def drill_root(tmp: Path, tiny_model: Path, n_prompts: int = N_PROMPTS) -> Path:
    """A data root: the tiny model, ``n_prompts`` prompts and the eval's judge file."""
    root = data_root(tmp, tiny_model, variant_prompts(n_prompts))
    (root / "judge.jsonl").write_text(
        "".join(
            json.dumps({"input": f"Say {w} in lowercase.", "output_1": w, "output_2": up, "label": 1}) + "\n"
            for w, up in JUDGE_ITEMS
        )
    )
    return root


def run_body(shard_size: int, votes: int = 3, **overrides: object) -> dict:
    """The search stages only, for the drills that check a status rather than outputs."""
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


def started_job(
    stack: Stack, redis: Redis, run_id: str, stage: str, shards: int, timeout: float = 180
) -> Job:
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


def data_files(run_dir: Path) -> list[Path]:
    """Every data file a run wrote: shard outputs (eval's included), pairs.jsonl, rft.jsonl."""
    return sorted(run_dir.glob("iter_*/*/*.jsonl"))


def data_digest(run_dir: Path, root: Path) -> dict[str, str]:
    """SHA-256 of each data file of a run, by path relative to the run.

    Timings live only in the completion records and manifests (``.json``), which are left out. The
    one thing two runs of the same config may not share is where they live: the eval rows name the
    model versions they scored by folder (``v1 (/…/runs/<id>/models/actor/v1)``), so the run's
    folder and its data root are replaced by fixed names before hashing. Anything else that differs
    changes the hash.
    """
    digest = {}
    for path in data_files(run_dir):
        data = path.read_bytes()
        for folder, name in ((run_dir, b"<run>"), (root, b"<data>")):
            for spelling in {str(folder), str(folder.resolve())}:
                data = data.replace(spelling.encode(), name)
        digest[str(path.relative_to(run_dir))] = hashlib.sha256(data).hexdigest()
    return digest


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


WEIGHT_ATOL = 0.0


def assert_same_weights(published: Path, clean: Path) -> None:
    """The published version's state dict equals the clean run's, tensor by tensor.

    Tolerance: none (``WEIGHT_ATOL`` = 0, exact equality). A training resumed from a step checkpoint
    restores the model, optimizer, LR scheduler, RNG states and the data order (transformers'
    ``resume_from_checkpoint`` skips the batches already seen), and on CPU with one thread (the
    workers' ``OMP_NUM_THREADS=1``, the clean run's ``torch.set_num_threads(1)``) every kernel is
    deterministic, so a resumed training is bit-identical to an uninterrupted one here.
    """
    import torch

    a, b = weights(published), weights(clean)
    assert a.keys() == b.keys()
    gaps = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert all(g <= WEIGHT_ATOL for g in gaps.values()), f"weights differ from the clean run's: {gaps}"


@dataclass(frozen=True)
class Reference:
    """The clean run of :func:`drill_body`: its data digest and its published actor v1."""

    digest: dict[str, str]
    actor_v1: Path


def clean_run(root: Path, body: dict, runs_dir: Path) -> RunPaths:
    """``body`` run in-process by the local executor, with the workers' thread count."""
    import torch

    from services.local import LocalExecutor
    from services.runs import create_run, resolve_paths
    from shared.config import RunConfig

    config = resolve_paths(RunConfig.model_validate(body), root.resolve())
    paths = create_run(config, runs_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with OMP_NUM_THREADS=1: same kernels, same bits
    try:
        LocalExecutor.for_run(paths).run()
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Reference:
    """One clean run of :func:`drill_body` for every drill of this module (about 10 s)."""
    tmp = tmp_path_factory.mktemp("clean")
    root = drill_root(tmp, tiny_model_path)
    paths = clean_run(root, drill_body(), tmp / "runs")
    digest = data_digest(paths.root, root)
    assert {
        "iter_0/assemble/pairs.jsonl",
        "iter_0/assemble/rft.jsonl",
        "iter_0/eval/shard_00000.jsonl",
    } <= set(digest), digest
    meta = read_metadata(version_dir(paths, "actor", 1))
    assert meta is not None and meta.alias_of is None, (
        "the clean run trained nothing: the drill lost its point"
    )
    return Reference(digest, version_dir(paths, "actor", 1))


def assert_matches(paths: RunPaths, stack: Stack, reference: Reference) -> None:
    """The run's data files and published actor equal the clean run's."""
    digest = data_digest(paths.root, stack.root)
    differ = sorted(
        k for k in digest.keys() | reference.digest.keys() if digest.get(k) != reference.digest.get(k)
    )
    assert not differ, f"data files differ from the clean run's: {differ}"
    assert_same_weights(version_dir(paths, "actor", 1), reference.actor_v1)


def assert_complete(paths: RunPaths, stages: list[str] = DRILL_STAGES) -> None:
    """Each stage has exactly one completion record per shard, a manifest counting them, no temp files."""
    for stage in stages:
        total = num_shards(paths, stage)
        manifest = read_json(paths.manifest(0, stage))
        assert manifest["shards"] == total, (stage, manifest)
        assert len(list(paths.stage_dir(0, stage).glob("shard_*.done.json"))) == total, stage
        assert not list(paths.stage_dir(0, stage).glob(".*.tmp")), f"temp files left in {stage}"


def running_shard(stack: Stack, redis: Redis, run_id: str, stage: str, pids: set[int]) -> tuple[Job, int]:
    """A running job of ``stage`` on one of the workers ``pids``, and that worker's pid.

    Running means RQ says STARTED *and* the worker publishes the job as its ``current_job``, so the
    kill lands inside the shard. Among those seen at once, a worker that has a scheduler fork is
    preferred: the retry is a scheduled job, so the survivor must also take over scheduling (the
    harder case). No waiting for a better victim: every moment spent here lets the shard finish.
    """
    shards = 2 if stage in ("sample", "judge", "refine") else 1

    def candidates() -> list[tuple[Job, int]]:
        found = []
        for shard in range(shards):
            job = fetch(redis, job_id(run_id, 0, stage, shard))
            if job is None or job.get_status(refresh=True) != JobStatus.STARTED or not job.worker_name:
                continue
            published = redis.hmget(worker_key(job.worker_name), ["pid", "current_job"])
            pid = int(published[0] or 0)
            if pid in pids and (published[1] or b"").decode() == job.id:
                found.append((job, pid))
        return found

    found = wait_until(candidates, 180, f"a {stage} shard of {run_id} to run", stack)
    return next((c for c in found if child_pids(c[1])), found[0])  # type: ignore[union-attr,index]


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (RQ forks each worker's scheduler), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def settled_jobs(redis: Redis, paths: RunPaths) -> list[tuple[str, object]]:
    """The run's shard jobs that are not (yet) finished, with their status."""
    jobs = [
        job_id(paths.run_id, i, stage, k)
        for i, stage in pipeline(DRILL_STAGES, 1, with_init=False)
        for k in range(num_shards(paths, stage))
    ]
    fetched = [(j, fetch(redis, j)) for j in jobs]
    return [
        (j, job.get_status() if job else None)
        for j, job in fetched
        if not job or job.get_status() != JobStatus.FINISHED
    ]


@pytest.fixture()
def make_stack(
    tmp_path: Path, tiny_model_path: Path, redis_server: RedisServer
) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks (data root with ``n`` prompts, a Redis URL); every process is killed after.

    It depends on ``redis_server`` so that the test's Redis is started first and stopped last, after
    every process that talks to it.
    """
    made: list[Stack] = []

    def make(redis_url: str, n_prompts: int = N_PROMPTS) -> Stack:
        stack = Stack(root=drill_root(tmp_path, tiny_model_path, n_prompts), redis_url=redis_url)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


# ----- the drills ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["sample", "judge", "refine", "train_actor", "eval"])
def test_a_worker_killed_mid_stage_is_retried_by_another_and_outputs_match_a_clean_run(
    stage: str, make_stack: Callable[..., Stack], redis_server: RedisServer, reference: Reference
) -> None:
    """kill -9 of the worker running a shard of ``stage``; the other worker of its role reruns it.

    train_actor: the kill comes once a step checkpoint is complete, and the retried job must resume
    from it (``resumed_from_step`` > 0) and publish the same weights as an uninterrupted training.
    """
    stack = make_stack(redis_server.url)
    redis = Redis.from_url(stack.redis_url)
    role = STAGE_QUEUE[stage]
    stack.start_api()
    pair = [stack.start_worker(role) for _ in range(2)]
    for other in QUEUES:
        if other != role:
            stack.start_worker(other)
    with stack.client() as c:
        run_id, paths = create(c, drill_body())
    job, pid = running_shard(stack, redis, run_id, stage, {p.pid for p in pair})
    shard = int(job.id.rsplit("-", 1)[1])
    if stage == "train_actor":
        ckpts = checkpoint_dir(paths, "actor", 1)
        wait_until(lambda: resume_point(ckpts), 120, "a complete step checkpoint", stack)
    victim_name = job.worker_name
    victim = next(p for p in pair if p.pid == pid)
    forks = child_pids(pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert not paths.shard_done(0, stage, shard).exists(), f"the {stage} shard finished before the kill"
    if stage == "train_actor":
        assert read_metadata(version_dir(paths, "actor", 1)) is None, "the training finished before the kill"
    final = stack.wait_for(run_id, timeout=300)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    retried = fetch(redis, job.id)
    assert retried is not None and retried.get_status() == JobStatus.FINISHED
    assert retried.worker_name not in ("", None, victim_name), "the shard was not rerun by the other worker"
    assert retried.retries_left == 2, "one retry (the abandoned execution) was used"
    wait_until(lambda: not any(alive(p) for p in forks), 15, "the killed worker's scheduler fork to exit")
    assert_complete(paths)
    if stage == "train_actor":
        metrics = read_json(paths.manifest(0, "train_actor"))["metrics"]
        assert metrics["resumed_from_step"] > 0 and metrics["steps"] == 60, metrics
        assert not checkpoint_dir(paths, "actor", 1).exists(), "the step checkpoints outlived the publish"
    assert_matches(paths, stack, reference)


def test_api_restarted_mid_run_the_run_goes_on_and_refine_answers(
    make_stack: Callable[..., Stack], redis_server: RedisServer, reference: Reference
) -> None:
    stack = make_stack(redis_server.url)
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, drill_body())
    started_job(stack, redis, run_id, "judge", 2)
    stack.stop_api(signal.SIGKILL)  # no shutdown hook runs: the scheduler lock is left to expire
    time.sleep(1.0)
    stack.start_api()  # same port
    final = stack.wait_for(run_id, timeout=300)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert_complete(paths)
    assert_matches(paths, stack, reference)

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
        assert result["refiner_version"] == "v0"  # the refiner is not trained in these drills
        assert isinstance(result["response"], str) and result["response"]
        assert result["refined"] in (True, False)


@pytest.mark.parametrize("how", ["kill", "shutdown"])
def test_redis_restarted_mid_run_from_its_append_only_file_the_run_finishes_the_same(
    how: str, make_stack: Callable[..., Stack], redis_server: RedisServer, reference: Reference
) -> None:
    """Redis (AOF on, as deployed) killed -9 or SHUT DOWN mid-run, then started on the same port and
    folder: the queues, jobs and run records come back from the append-only file (a SIGKILL may lose
    the last second of writes: the scheduler re-derives the rest from the artifact store), workers
    and the API reconnect, and the run ends with the clean run's outputs."""
    stack = make_stack(redis_server.url)
    stack.env_extra["SPAR_WORKER_REDIS_TIMEOUT"] = "2"
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, drill_body())
    started_job(stack, redis, run_id, "refine", 2)
    redis_server.restart(how, down_s=2.0)
    final = stack.wait_for(run_id, timeout=300)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert all(p.poll() is None for _, p in stack.workers), "a worker died instead of reconnecting"
    assert_complete(paths)
    assert_matches(paths, stack, reference)
    # Jobs that looked abandoned while Redis was away get a retry (a no-op: their shard is done).
    wait_until(lambda: not settled_jobs(redis, paths), 60, "every shard job to finish", stack)


def test_redis_unreachable_for_seconds_workers_and_api_reconnect(
    make_stack: Callable[..., Stack], redis_server: RedisServer, reference: Reference
) -> None:
    stack = make_stack(redis_server.url)
    assert redis_server.proc is not None
    server = redis_server.proc
    # Workers wait at most 11 s on a Redis reply here (1 s asked; RQ raises it to its dequeue
    # timeout + 10 s), so the pause below also ends RQ's work loop: the worker must reconnect.
    stack.env_extra["SPAR_WORKER_REDIS_TIMEOUT"] = "1"
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, drill_body())
    started_job(stack, redis, run_id, "judge", 2)
    # A stopped server accepts nothing and answers nothing: an unreachable Redis, but with its data
    # kept. 14 s is past the API's 5 s socket timeout (calls time out, not only stall), past the
    # workers' 3 s heartbeat TTL (running jobs look abandoned and get retried: no harm may come of
    # it) and past the workers' 11 s Redis timeout (RQ's loop quits; the process must not).
    os.kill(server.pid, signal.SIGSTOP)
    time.sleep(float(os.environ.get("SPAR_TEST_REDIS_PAUSE", "14")))
    os.kill(server.pid, signal.SIGCONT)
    final = stack.wait_for(run_id, timeout=300)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert all(p.poll() is None for _, p in stack.workers), "a worker died instead of reconnecting"
    logs = "".join(path.read_text() for path in stack.logs if path.name.startswith("worker-"))
    assert "worker.reconnect" in logs, "the pause never ended a worker loop: the test lost its point"
    assert_complete(paths)
    # A job that looked abandoned during the pause has a retry scheduled (1 s here) even though its
    # shard got done: it must run (a no-op) soon, which needs the scheduler lock of the worker loop
    # the pause ended to be freed (it used to wait out its 61 s expiry).
    deadline = time.monotonic() + 30
    while settled_jobs(redis, paths) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not settled_jobs(redis, paths), (
        f"jobs left unfinished: {settled_jobs(redis, paths)}\n{stack.tail_logs()}"
    )
    assert_matches(paths, stack, reference)


def test_a_shard_that_always_fails_fails_the_run_and_resume_redoes_only_it(
    make_stack: Callable[..., Stack], redis_server: RedisServer
) -> None:
    stack = make_stack(redis_server.url, 4)
    stack.env_extra["SPAR_FAIL_SHARDS"] = "judge:1"
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, run_body(shard_size=2))
        final = stack.wait_for(run_id, timeout=120)
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
        final = stack.wait_for(run_id, timeout=120)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert final["error"] is None
    assert kept.stat().st_mtime_ns == stamp, "judge shard 0 was recomputed"
    assert_complete(paths, ["sample", "judge", "refine", "assemble"])


def test_cancel_stops_the_run_and_resume_finishes_it_with_the_clean_runs_outputs(
    make_stack: Callable[..., Stack], redis_server: RedisServer, reference: Reference
) -> None:
    stack = make_stack(redis_server.url)
    redis = Redis.from_url(stack.redis_url)
    stack.start_api()
    stack.start_workers()
    with stack.client() as c:
        run_id, paths = create(c, drill_body())
        started_job(stack, redis, run_id, "judge", 2)
        sample_done = {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)}
        cancelled = c.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 200  # cancelling twice is harmless

        def settled() -> bool:
            return all(
                StartedJobRegistry(q, connection=redis, serializer=SERIALIZER).count == 0 for q in QUEUES
            )

        wait_until(settled, 60, "the running shards to stop", stack)
        time.sleep(2.0)  # several scheduler ticks: none may enqueue anything or revive the run
        assert c.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
        for q in QUEUES:
            assert Queue(q, connection=redis, serializer=SERIALIZER).count == 0, q
            assert ScheduledJobRegistry(q, connection=redis, serializer=SERIALIZER).count == 0, q
        for stage in ("refine", "assemble", "train_actor", "eval"):
            for shard in range(num_shards(paths, stage)):
                assert fetch(redis, job_id(run_id, 0, stage, shard)) is None, (stage, shard)
        assert not paths.manifest(0, "judge").exists()
        assert {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)} == sample_done

        resumed = c.post(f"/v1/runs/{run_id}/resume")
        assert resumed.status_code == 200, resumed.text
        final = stack.wait_for(run_id, timeout=300)
    assert final["status"] == "succeeded", f"{final}\n{stack.tail_logs()}"
    assert {k: paths.shard_done(0, "sample", k).stat().st_mtime_ns for k in range(2)} == sample_done
    assert_complete(paths)
    assert_matches(paths, stack, reference)


def test_a_job_naming_a_foreign_function_is_refused(
    make_stack: Callable[..., Stack], redis_server: RedisServer, tmp_path: Path
) -> None:
    stack = make_stack(redis_server.url, 1)
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
