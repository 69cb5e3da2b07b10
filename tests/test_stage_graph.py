"""The iteration as a dependency graph (issue 26): edges derived from what each stage reads.

* the edges: ``train_actor`` and ``train_refiner`` are independent, iteration t+1's ``sample`` needs
  only the actor trained at t, ``judge`` at t+1 the refiner trained at t, ``eval`` both new versions;
* the pipeline order (the local executor's, the scheduler's serial mode) is a topological order;
* the declaration is checked against the files each stage runner really opens in a tiny two-iteration
  run: a runner that reads an input its ``reads`` do not name fails here;
* the scheduler starts every ready stage at once (graph order) or one at a time (serial order), and
  runs sharing a queue get bounded windows: a later run's jobs are never queued behind a whole stage
  of an earlier run (no starvation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from run_fixtures import new_run

from services.local import LocalExecutor
from services.runs import create_run, load_config_file
from services.scheduler import RunStatus, Scheduler, SchedulerSettings, running_stages, started_pipeline
from shared.runtime.artifacts import RunPaths
from shared.stages import STAGE_TABLE, STAGES, Node, dependencies, graph, pipeline, stage

ALL = list(STAGES)


# ----- the edges ----------------------------------------------------------------------------------
def test_the_two_trainings_are_independent_and_need_only_the_iterations_data() -> None:
    deps = graph(ALL, 2, with_init=False)
    assert deps[(0, "train_actor")] == ((0, "assemble"), (0, "iopo_groups"))
    assert deps[(0, "train_refiner")] == ((0, "assemble"),)
    assert (0, "train_actor") not in deps[(0, "train_refiner")]
    assert (0, "train_refiner") not in deps[(0, "train_actor")]


def test_cross_iteration_edges_follow_the_model_versions() -> None:
    deps = graph(ALL, 2, with_init=True)
    assert deps[(1, "sample")] == ((0, "train_actor"),), "sample@1 needs M_1 only"
    assert set(deps[(1, "judge")]) == {(0, "train_refiner"), (1, "sample")}, "judge@1 needs R_1"
    assert set(deps[(1, "refine")]) == {(0, "train_refiner"), (1, "judge")}
    assert set(deps[(0, "eval")]) == {(0, "init"), (0, "train_actor"), (0, "train_refiner")}
    assert set(deps[(1, "train_actor")]) == {(0, "train_actor"), (1, "assemble"), (1, "iopo_groups")}
    # evaluation never holds the next iteration back
    assert not any(t == 0 and s == "eval" for node in deps if node[0] == 1 for t, s in deps[node])
    # stage 0 writes v0: every stage of iteration 0 that loads a model waits for it
    for name in ("sample", "judge", "refine", "iopo_groups", "train_actor", "train_refiner", "eval"):
        assert (0, "init") in deps[(0, name)], name
    assert (0, "init") not in deps[(0, "assemble")]  # it loads no model


def test_an_unconfigured_producer_is_no_dependency() -> None:
    stages = ["sample", "judge", "refine", "assemble", "train_actor"]
    assert dependencies("train_actor", 0, stages, False) == ((0, "assemble"),)
    # no refiner training: judge@1 judges with R_0, yet waits for iteration 0 to end, which keeps
    # the iterations in order (a run that trains nothing cannot run ahead through its iterations)
    assert dependencies("judge", 1, stages, False) == ((0, "train_actor"), (1, "sample"))


def test_pipeline_order_is_a_topological_order_of_the_graph() -> None:
    for stages in (ALL, ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner"]):
        for with_init in (False, True):
            deps = graph(stages, 3, with_init)
            seen: set[Node] = set()
            for node in pipeline(stages, 3, with_init):
                assert set(deps[node]) <= seen, (node, deps[node])
                seen.add(node)


def test_a_read_naming_no_stage_is_an_error() -> None:
    from shared.stages import producers

    with pytest.raises(ValueError, match="names no stage"):
        producers("iter_t/nope/x.jsonl", 0, ALL, False)
    with pytest.raises(ValueError, match="model read"):
        producers("models/actor/v<t+2>", 0, ALL, False)


# ----- the declaration against what the runners open ---------------------------------------------
def _covered(node: Node, relative: str) -> bool:
    """Whether the declared reads (or, for the stage's own files, its writes) of ``node`` name the
    run file ``relative`` that its runner opened."""
    t, name = node
    d = stage(name)
    parts = relative.split("/")
    if relative in ("config.json", ".changes", "prompts"):
        return True  # the run's config, its change journal, its shard count (fixed at creation)
    if parts[0] == "prompts":
        return any(r.startswith("prompts/") for r in d.reads)
    if parts[0].startswith("iter_"):
        iteration, producer = int(parts[0].removeprefix("iter_")), parts[1]
        if (iteration, producer) == node:
            return True  # its own output and completion records
        return iteration == t and any(r.startswith(f"iter_t/{producer}/") for r in d.reads)
    if parts[0] == "models":
        role, folder = parts[1], parts[2]
        if folder.startswith("."):  # a staging folder: the stage is publishing a version
            return any(w.startswith(f"models/{role}/") or w.startswith("models/<role>/") for w in d.writes)
        version = int(folder.removeprefix("v"))
        if version == t + 1 and f"models/{role}/v<t+1>" in d.writes:
            return True
        if version == 0 and "models/<role>/v0" in d.writes:
            return True
        # reading version k resolves its aliases back through k-1, ... (all older, all complete)
        return (f"models/{role}/v<t>" in d.reads and version <= t) or (
            f"models/{role}/v<t+1>" in d.reads and version <= t + 1
        )
    if parts[0] == "checkpoints":
        return any(w.startswith("checkpoints/") for w in d.writes)
    return False


_AUDIT = """
import json, os, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
log = open(sys.argv[2], "w")
current = [None]
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

def hook(event, args):
    if current[0] is None:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        if mode is not None and any(c in str(mode) for c in "wax+"):
            return
        if mode is None and flags and flags & WRITE:
            return
    elif event in ("os.listdir", "os.scandir"):
        path = args[0]
        if path is None or isinstance(path, int):
            return
    else:
        return
    try:
        full = Path(os.fsdecode(path)).resolve()
    except (OSError, ValueError):
        return
    if full.is_relative_to(root) and full != root:
        log.write(json.dumps([*current[0], str(full.relative_to(root))]) + "\\n")

sys.addaudithook(hook)

from services.local import LocalExecutor
from services.runs import open_run


class Audited(LocalExecutor):
    def run_stage(self, iteration, stage):
        current[0] = (iteration, stage)
        try:
            return super().run_stage(iteration, stage)
        finally:
            current[0] = None


Audited.for_run(open_run(root)).run()
log.close()
"""


def test_every_file_a_stage_opens_is_declared_in_its_reads(tmp_path: Path, tiny_model_path: Path) -> None:
    """A tiny two-iteration run of every stage, in a child process with an audit hook on ``open``
    and directory listings: each run file a runner reads must be named by its stage's declaration."""
    prompts = [f"Write {w} in lowercase. Variant {k}." for k, w in enumerate(["hello", "tea", "sky", "yes"])]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    judge_file = tmp_path / "llmbar.jsonl"
    judge_file.write_text(
        json.dumps({"input": "Say hi in lowercase.", "output_1": "hi", "output_2": "HI", "label": 1}) + "\n"
    )
    train = {"max_steps": 1, "batch_size": 2, "grad_accum": 1, "max_length": 192, "learning_rate": 1e-4}
    config = {
        "name": "audit",
        "seed": 3,
        "iterations": 2,
        "prompts": "prompts.jsonl",
        "shard_size": 2,
        "actor": {"model": str(tiny_model_path), "hf": {"batch_size": 16}},
        "refiner": {"model": str(tiny_model_path), "hf": {"batch_size": 16}},
        "sample": {"num_responses": 3, "max_new_tokens": 16},
        "judge": {"votes": 3, "max_new_tokens": 24},
        "search": {"branching": 2, "beam": 1, "max_depth": 1, "max_new_tokens": 32},
        "iopo": {"rewrites": 1, "min_task_overlap": 0.0},
        "stages": ALL,
        "train_actor": {**train, "objective": "iopo"},
        "train_refiner": train,
        "evaluation": {"ifeval_limit": 1, "max_new_tokens": 8, "judge_data": str(judge_file)},
    }
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    paths = create_run(load_config_file(tmp_path / "config.yaml"), tmp_path / "runs", "audit")
    log = tmp_path / "opened.jsonl"
    script = tmp_path / "audit.py"
    script.write_text(_AUDIT)
    env = os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(script), str(paths.root), str(log)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    opened = [json.loads(line) for line in log.read_text().splitlines()]
    stages_seen = {(t, s) for t, s, _ in opened}
    assert {(1, "sample"), (1, "judge"), (0, "train_actor"), (1, "train_refiner"), (1, "eval")} <= stages_seen
    undeclared = sorted({(t, s, p) for t, s, p in opened if not _covered((t, s), p)})
    assert not undeclared, f"stages opened files their declared reads do not name: {undeclared}"
    # and the check has teeth: an undeclared read is caught
    assert not _covered((1, "sample"), "iter_1/judge/shard_00000.jsonl")
    assert not _covered((1, "judge"), "models/refiner/v2/spar_version.json")
    assert not _covered((0, "train_refiner"), "iter_0/assemble/pairs.jsonl") or any(
        r.startswith("iter_t/assemble/") for r in stage("train_refiner").reads
    )


# ----- the scheduler ------------------------------------------------------------------------------
def _run(tmp_path: Path, name: str, prompts: int, stages: list[str]) -> RunPaths:
    folder = tmp_path / name
    folder.mkdir()
    texts = [f"{name} p{k}" for k in range(prompts)]
    return new_run(folder, name, texts, runs=tmp_path / "runs", shard_size=1, stages=stages, iterations=2)


def _finish(paths: RunPaths, iteration: int, name: str) -> None:
    """Make a stage look done to the scheduler: its shards' completion records and its manifest."""
    from shared.runtime.artifacts import write_json_atomic

    folder = paths.stage_dir(iteration, name)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.manifest(iteration, name), {"stage": name, "iteration": iteration})


def _queued(redis: Redis, queue: str) -> list[str]:
    return [one.decode() for one in redis.lrange(f"rq:queue:{queue}", 0, -1)]


@pytest.fixture()
def redis(private_redis: tuple[subprocess.Popen, int]) -> Redis:
    return Redis(port=private_redis[1])


def test_graph_order_enqueues_both_trainings_and_the_next_sample_at_once(
    redis: Redis, tmp_path: Path
) -> None:
    stages = ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"]
    paths = _run(tmp_path, "g", 2, stages)
    for name in ("sample", "judge", "refine", "assemble"):
        _finish(paths, 0, name)
    scheduler = Scheduler(redis)
    scheduler.register(paths)
    scheduler.tick()
    assert running_stages(paths) == [(0, "train_actor"), (0, "train_refiner")]
    assert set(_queued(redis, "train")) == {
        f"{paths.run_id}-0-train_actor-0",
        f"{paths.run_id}-0-train_refiner-0",
    }
    state = scheduler.state(paths.run_id)
    assert state["status"] == RunStatus.RUNNING and state["running"] == "0:train_actor,0:train_refiner"
    assert (state["iteration"], state["stage"]) == ("0", "train_actor")  # the old fields: the first
    _finish(paths, 0, "train_actor")
    scheduler.tick()  # M_1 exists: iteration 1 samples while the refiner still trains
    assert running_stages(paths) == [(0, "train_refiner"), (1, "sample")]
    assert {f"{paths.run_id}-1-sample-{k}" for k in range(2)} <= set(_queued(redis, "actor"))
    assert scheduler.state(paths.run_id)["running"] == "0:train_refiner,1:sample"
    assert (1, "judge") in list(started_pipeline(paths)) and (1, "eval") in list(started_pipeline(paths))
    _finish(paths, 0, "train_refiner")
    scheduler.tick()  # eval of iteration 0 and iteration 1's sample at once
    assert running_stages(paths) == [(0, "eval"), (1, "sample")]


def test_serial_order_runs_one_stage_at_a_time_in_pipeline_order(redis: Redis, tmp_path: Path) -> None:
    stages = ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"]
    paths = _run(tmp_path, "s", 2, stages)
    for name in ("sample", "judge", "refine", "assemble"):
        _finish(paths, 0, name)
    scheduler = Scheduler(redis, SchedulerSettings(order="serial"))
    scheduler.register(paths)
    scheduler.tick()
    assert _queued(redis, "train") == [f"{paths.run_id}-0-train_actor-0"]
    assert scheduler.state(paths.run_id)["running"] == "0:train_actor"
    _finish(paths, 0, "train_actor")
    scheduler.tick()
    assert _queued(redis, "train")[-1] == f"{paths.run_id}-0-train_refiner-0"
    assert _queued(redis, "actor") == [], "serial order: no sample before the iteration is over"


def test_the_local_executor_keeps_the_pipeline_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[tuple[int, str]] = []
    monkeypatch.setattr(LocalExecutor, "run_stage", lambda self, t, s: order.append((t, s)) or {})
    paths = _run(tmp_path, "l", 1, ALL)
    executor = LocalExecutor(paths=paths, engines=None)  # type: ignore[arg-type]
    executor.run()
    assert order == list(pipeline(ALL, 2, with_init=False))


def test_runs_sharing_a_queue_take_turns_and_none_starves(redis: Redis, tmp_path: Path) -> None:
    """Run A (40 shards) is registered first, run B (3 shards) after: B's jobs are queued behind at
    most A's window, not behind A's whole stage, and A's further jobs go behind B's as A's finish."""
    big = _run(tmp_path, "a", 40, ["sample", "judge"])
    small = _run(tmp_path, "b", 3, ["sample", "judge"])
    scheduler = Scheduler(redis, SchedulerSettings(fair_window=4))
    scheduler.register(big)
    scheduler.register(small)
    scheduler.tick()
    queued = _queued(redis, "actor")
    assert queued == [f"{big.run_id}-0-sample-{k}" for k in range(4)] + [
        f"{small.run_id}-0-sample-{k}" for k in range(3)
    ]
    # two of A's shards finish (as a worker would leave them): A may hold two more jobs, queued
    # behind every one of B's
    for k in range(2):
        redis.lrem("rq:queue:actor", 1, f"{big.run_id}-0-sample-{k}")
        redis.hset(f"rq:job:{big.run_id}-0-sample-{k}", "status", "finished")
        done = big.shard_done(0, "sample", k)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("{}")
    scheduler.tick()
    queued = _queued(redis, "actor")
    assert queued[-2:] == [f"{big.run_id}-0-sample-4", f"{big.run_id}-0-sample-5"]
    assert all(f"{small.run_id}-0-sample-{k}" in queued[:-2] for k in range(3))
    assert sum(one.startswith(big.run_id) for one in queued) == 4, "A holds its window, no more"


def test_a_restarted_scheduler_finds_the_runs_jobs_and_keeps_its_window(redis: Redis, tmp_path: Path) -> None:
    paths = _run(tmp_path, "r", 20, ["sample", "judge"])
    Scheduler(redis, SchedulerSettings(fair_window=4)).register(paths)
    Scheduler(redis, SchedulerSettings(fair_window=4)).tick()
    Scheduler(redis, SchedulerSettings(fair_window=4)).tick()  # an API restart: nothing in memory
    assert _queued(redis, "actor") == [f"{paths.run_id}-0-sample-{k}" for k in range(4)]


def test_the_window_grows_with_the_pool(redis: Redis) -> None:
    scheduler = Scheduler(redis, SchedulerSettings(fair_window=2))
    for k in range(5):
        redis.sadd("rq:workers:actor", f"rq:worker:w{k}")
    scheduler.tick()
    assert scheduler.window("actor") == 10 and scheduler.window("train") == 2


def test_stage_table_reads_name_known_stages_and_versions() -> None:
    from shared.stages import producers

    for d in STAGE_TABLE:
        for read in d.reads:
            producers(read, 1, ALL, True)  # raises for a read the graph cannot resolve


def test_the_run_view_lists_every_running_stage_and_keeps_the_old_fields() -> None:
    from services.api.models import RunView
    from services.api.views import run_view_live

    state = {
        "status": "running",
        "iteration": "0",
        "stage": "train_refiner",
        "running": "0:train_refiner,1:sample",
    }
    view = run_view_live("r", RunPaths(Path("/nowhere/r")), state)
    assert view["running"] == [
        {"iteration": 0, "stage": "train_refiner"},
        {"iteration": 1, "stage": "sample"},
    ]
    assert (view["iteration"], view["stage"]) == (0, "train_refiner")
    RunView.model_validate(view | {"progress": [], "iterations": [], "models": {}})
    assert run_view_live("r", RunPaths(Path("/nowhere/r")), state | {"status": "succeeded"})["running"] == []
    assert (
        run_view_live("r", RunPaths(Path("/nowhere/r")), {"status": "running"})["running"] == []
    )  # older state
