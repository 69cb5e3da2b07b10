"""Engines free their memory: one resident engine, closed before the next loads, released for training.

Three layers: the slot policy with recording fake engines (fast); ``ProcessEngine`` hosting the HF
engine on the tiny model (a real child process, same outputs and stats as in-process); and real
vLLM on SmolLM2 in a worker's ``WorkerEngines``: after serving v0 then v1 the process tree's memory
and child processes equal a fresh start on v1, and training starts with the engine gone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import psutil
import pytest

from shared.config import ModelConfig, RunConfig, VLLMEngineConfig
from shared.engine import EngineStats, GenerationRequest, MeteredEngine
from shared.runtime.versions import ModelVersion
from workers.engines.footprint import process_tree  # noqa: E402
from workers.engines.slot import EngineSlot

REQUESTS = [
    GenerationRequest(
        messages=[{"role": "user", "content": f"Write {i + 2} words about the sea."}],
        n=2,
        temperature=0.8,
        max_new_tokens=12,
        seed=i,
    )
    for i in range(3)
] + [GenerationRequest(messages=[{"role": "user", "content": "Say hi."}], temperature=0.0, max_new_tokens=8)]


tree = process_tree


# ---------------------------------------------------------------------------------------------
# The slot policy, with fake engines that record when they are built and closed.


class FakeEngine:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events
        events.append(f"build {name}")

    def generate(self, requests):
        return [["x"] * r.n for r in requests]

    def close(self) -> None:
        self.events.append(f"close {self.name}")


def fake_slot(
    monkeypatch: pytest.MonkeyPatch, actor: str = "a", refiner: str = "r"
) -> tuple[EngineSlot, list]:
    import workers.engines as engines

    events: list[str] = []
    monkeypatch.setattr(
        engines, "build_engine", lambda model, version, seed=0: FakeEngine(version.path, events)
    )
    config = RunConfig(prompts="p.jsonl", actor=ModelConfig(model=actor), refiner=ModelConfig(model=refiner))
    return EngineSlot(config), events


def test_a_version_swap_closes_the_old_engine_before_building_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slot, events = fake_slot(monkeypatch)
    first = slot.engine_for("actor", ModelVersion("actor", "v0", "m0"))
    assert slot.engine_for("actor", ModelVersion("actor", "v0", "m0")) is first  # kept across shards
    slot.engine_for("actor", ModelVersion("actor", "v1", "m1"))
    assert events == ["build m0", "close m0", "build m1"]
    assert len(slot.loaded) == 1 and slot.current == {"actor": "v1 (m1)"}


def test_roles_take_turns_and_share_an_identical_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    slot, events = fake_slot(monkeypatch)
    slot.engine_for("actor", ModelVersion("actor", "v0", "A"))
    slot.engine_for("refiner", ModelVersion("refiner", "v0", "R"))  # another model: actor closed first
    assert events == ["build A", "close A", "build R"]
    shared_slot, shared_events = fake_slot(monkeypatch, actor="same", refiner="same")
    one = shared_slot.engine_for("actor", ModelVersion("actor", "v0", "S"))
    assert shared_slot.engine_for("refiner", ModelVersion("refiner", "v0", "S")) is one
    assert shared_events == ["build S"] and set(shared_slot.current) == {"actor", "refiner"}


def test_release_closes_for_real_and_the_worker_publishes_nothing_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.engines as engines
    from workers.jobs import WorkerEngines

    events: list[str] = []
    monkeypatch.setattr(
        engines, "build_engine", lambda model, version, seed=0: FakeEngine(version.path, events)
    )
    worker = WorkerEngines(
        RunConfig(prompts="p.jsonl", actor=ModelConfig(model="a"), refiner=ModelConfig(model="a"))
    )
    worker.engine_for("actor", ModelVersion("actor", "v0", "m0"))
    assert worker.published()["models"] == "actor: v0 (m0)"
    worker.release()
    worker.release()  # idempotent
    assert events == ["build m0", "close m0"]
    assert worker.engine is None and worker.published() == {"models": "", "engine_pids": ""}


def test_the_eval_stage_holds_one_engine_at_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Actor v0, refiner v0, actor v1, refiner v1: never two engines, each closed before the next."""
    import workers.stages.evaluate as evaluate
    from services.runs import create_run
    from shared.runtime.shards import StageSpec
    from shared.runtime.versions import version_dir, write_metadata
    from workers.stages.common import StageContext

    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (tmp_path / "pairs.jsonl").write_text("")
    config = RunConfig(
        prompts=str(tmp_path / "p.jsonl"),
        actor=ModelConfig(model="A"),
        refiner=ModelConfig(model="R"),
        evaluation={"judge_data": str(tmp_path / "pairs.jsonl")},
    )
    paths = create_run(config, tmp_path / "runs", "r")
    for role in ("actor", "refiner"):
        target = version_dir(paths, role, 1)
        target.mkdir(parents=True)
        write_metadata(
            target,
            {
                "role": role,
                "version": "v1",
                "parent": "v0",
                "data": {"file": "pairs.jsonl", "sha256": "0" * 64, "records": 0},
                "hyperparameters": {},
                "created_at": "2026-12-02T00:00:00+00:00",
            },
        )
    slot, events = fake_slot(monkeypatch, actor="A", refiner="R")
    resident: list[int] = []

    def ifeval(engine, limit, max_new_tokens):
        resident.append(len(slot.loaded))
        return {k: 0.0 for k in evaluate.IFEVAL_KEYS}

    def judge(engine, items, **kwargs):
        resident.append(len(slot.loaded))
        return {k: 0.0 for k in evaluate.JUDGE_KEYS}

    monkeypatch.setattr("shared.evaluation.ifeval.evaluate_ifeval", ifeval)
    monkeypatch.setattr("shared.evaluation.judge_eval.evaluate_judge", judge)
    monkeypatch.setattr("shared.evaluation.judge_eval.load_pairwise", lambda path, limit: [])
    slot.config = config
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="eval", shard=0)
    evaluate.run_eval(StageContext.open(paths, spec, slot))
    v1 = str(version_dir(paths, "actor", 1)), str(version_dir(paths, "refiner", 1))
    assert events == [
        "build A",
        "close A",
        "build R",
        "close R",
        f"build {v1[0]}",
        f"close {v1[0]}",
        f"build {v1[1]}",
    ]
    assert resident == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# ProcessEngine around the HF engine on the tiny model: a real child, same answers.


def test_a_process_engine_answers_like_the_in_process_engine_and_its_close_ends_the_child(
    tiny_model_path: Path,
) -> None:
    from workers.engines import build_engine
    from workers.engines.process import EngineHostError, ProcessEngine

    model = ModelConfig(model=str(tiny_model_path), engine="hf")
    version = ModelVersion("actor", "v0", str(tiny_model_path))
    inline = build_engine(model, version, isolated=False)
    expected = inline.generate(REQUESTS)
    inline.close()

    hosted = build_engine(model, version, isolated=True)
    assert isinstance(hosted, ProcessEngine)
    metered = MeteredEngine(hosted)
    assert metered.generate(REQUESTS) == expected  # one batch in, the same seeded outputs out
    assert hosted.stats.calls == 1 and hosted.stats.requests == len(REQUESTS)
    assert metered.stats.generated_tokens == inline.stats.generated_tokens > 0
    assert metered.stats.prompt_tokens == inline.stats.prompt_tokens > 0
    pid = hosted.proc.pid
    assert psutil.pid_exists(pid)
    hosted.close()
    hosted.close()  # idempotent
    assert hosted.proc.poll() is not None and not psutil.Process().children(recursive=True)
    with pytest.raises(EngineHostError, match="closed"):
        hosted.generate(REQUESTS)


def test_a_stream_through_the_engine_host_answers_like_a_batch_and_frees_the_host(
    tiny_model_path: Path,
) -> None:
    """The host runs the stream (batches for an HF engine); tags stay in the parent; after the
    stream, or a stream closed with work in flight, the host serves ``generate`` again."""
    from shared.streaming import open_stream
    from workers.engines.process import ProcessEngine

    model = ModelConfig(model=str(tiny_model_path), engine="hf")
    hosted = ProcessEngine(model, ModelVersion("actor", "v0", str(tiny_model_path)))
    try:
        expected = hosted.generate(REQUESTS)
        alone = hosted.generate(REQUESTS[:1])  # the HF engine seeds per batch: compare like with like
        tags = [("tree", object()), "judge", 7, ("x", 1)]  # not JSON: they never leave this process
        got: dict[object, list[str]] = {}
        with open_stream(hosted) as stream:
            for priority, (tag, request) in enumerate(zip(tags, REQUESTS, strict=True)):
                stream.submit(tag, request, priority)  # priorities travel; a batch engine ignores them
            while stream.pending:
                got.update(stream.poll())
        assert [got[tag] for tag in tags] == expected
        assert hosted.stats.generated_tokens > 0
        assert hosted.reset_prefix_cache() is False  # the HF engine has no prefix cache to empty

        with open_stream(hosted) as stream:  # closed with requests never polled
            stream.submit("left", REQUESTS[0])
            stream.poll()
            stream.submit("unsent", REQUESTS[1])
        assert hosted.generate(REQUESTS[:1]) == alone
    finally:
        hosted.close()
    assert not psutil.Process().children(recursive=True)


def test_a_process_engine_that_cannot_start_fails_at_once_and_leaves_no_child(tmp_path: Path) -> None:
    from workers.engines.process import EngineHostError, ProcessEngine

    missing = tmp_path / "no-such-model"
    with pytest.raises(Exception, match="no-such-model") as caught:
        ProcessEngine(ModelConfig(model=str(missing), engine="hf"), ModelVersion("actor", "v0", str(missing)))
    assert caught.type is not AssertionError
    assert not psutil.Process().children(recursive=True)
    assert issubclass(EngineHostError, RuntimeError)


def test_a_dead_host_is_reported_and_cleaned_up(tiny_model_path: Path) -> None:
    from workers.engines.process import EngineHostError, ProcessEngine

    engine = ProcessEngine(
        ModelConfig(model=str(tiny_model_path), engine="hf"), ModelVersion("a", "v0", str(tiny_model_path))
    )
    engine.proc.kill()
    with pytest.raises(EngineHostError, match="exited with code"):
        engine.generate(REQUESTS)
    assert not psutil.Process().children(recursive=True)


# ---------------------------------------------------------------------------------------------
# Real vLLM (CPU build) on SmolLM2 in a worker: swap v0 -> v1, compare with a fresh start on v1.


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from workers.models.smollm2 import prepare_smollm2

    cache = Path(os.environ.get("SPAR_CACHE_DIR", ".cache"))
    return prepare_smollm2(cache / "models" / "smollm2-135m-instruct")


def vllm_settings() -> VLLMEngineConfig:
    """CPU settings: bfloat16, eager, a short context and an explicit 1 GiB KV cache."""
    fields = VLLMEngineConfig.model_fields
    extra = {"kv_cache_gb": 1.0} if "kv_cache_gb" in fields else {}
    if not extra:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"  # vLLM CPU's own setting (GiB), inherited by the host
    return VLLMEngineConfig(dtype="bfloat16", enforce_eager=True, max_model_len=1024, **extra)


@pytest.fixture(scope="module")
def swap(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole scenario once (three vLLM loads, one engine alive at a time); tests read its numbers."""
    from services.runs import create_run
    from shared.runtime.shards import StageSpec
    from workers.jobs import WorkerEngines
    from workers.stages.common import StageContext
    from workers.stages.train import run_train_actor

    root = tmp_path_factory.mktemp("swap")
    v1_dir = root / "v1"
    shutil.copytree(smollm2, v1_dir)  # another version: another folder, the same weights
    prompts = root / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    model = ModelConfig(model=str(smollm2), engine="vllm", vllm=vllm_settings())
    config = RunConfig(prompts=str(prompts), actor=model, refiner=model)
    paths = create_run(config, root / "runs", "r")
    v0 = ModelVersion("actor", "v0", str(smollm2))
    v1 = ModelVersion("actor", "v1", str(v1_dir))
    import workers.training.actor  # noqa: F401  the train stage imports torch/trl in the worker itself:
    # do it before the baseline, so the comparisons see engine memory only, not the trainer's imports

    out: dict = {"start": tree()}

    worker = WorkerEngines(config)
    engine = worker.engine_for("actor", v0)
    metered = MeteredEngine(engine)
    first = metered.generate(REQUESTS)
    out["reset"] = engine.reset_prefix_cache()  # through the host, into vLLM
    out["v0"] = tree()
    out["v0_stats"] = metered.stats.snapshot()
    out["v0_host"] = worker.host_pids()
    engine = worker.engine_for("actor", v1)
    second = engine.generate(REQUESTS)
    out["swapped"] = tree()
    out["swap_hosts"] = worker.host_pids()
    out["same_outputs"] = first == second  # same weights, same seeds
    out["published"] = worker.published()

    # Training: the train stage releases the engine before the trainer starts; record that moment.
    data = paths.data_file(0, "pairs.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")

    def trainer(*args, **kwargs):  # whatever the train stage passes: only the moment matters
        out["training"] = tree()
        out["training_loaded"] = len(worker.loaded)
        return {"loss_curve": []}

    import workers.training.actor as actor_training

    original, actor_training.train_actor = actor_training.train_actor, trainer
    try:
        spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="train_actor", shard=0)
        run_train_actor(StageContext.open(paths, spec, worker))
    finally:
        actor_training.train_actor = original
    out["released"] = tree()

    fresh = WorkerEngines(config)  # a fresh start on v1, in the same (now empty) worker
    fresh.engine_for("actor", v1).generate(REQUESTS)
    out["fresh"] = tree()
    fresh.release()
    out["end"] = tree()
    print(
        "\nprocess tree (MB, children): "
        + ", ".join(
            f"{k} {out[k][0]:.0f} MB/{out[k][1]}"
            for k in ("start", "v0", "swapped", "training", "fresh", "end")
        )
    )
    return out


# A fresh engine host is the same program on the same weights with the same KV cache, so the two
# trees differ only by allocator and page-touch noise of the host (measured at about 1-3% of the
# ~3.5 GB footprint here) and by Python objects the worker itself accumulated. 10% of the loaded
# footprint (~350 MB) is far below one more engine (~3.5 GB) or a leaked KV cache (1 GiB) and far
# above that noise; the child-process count must match exactly.
TOLERANCE = 0.10


def test_after_a_swap_the_worker_holds_what_a_fresh_start_on_v1_holds(swap: dict) -> None:
    swapped, fresh, start = swap["swapped"], swap["fresh"], swap["start"]
    footprint = fresh[0] - start[0]
    print(f"swapped {swapped[0]:.0f} MB/{swapped[1]} children, fresh {fresh[0]:.0f} MB/{fresh[1]} children")
    assert footprint > 1000  # a real vLLM engine was measured (weights + 1 GiB KV cache)
    assert swapped[1] == fresh[1]
    assert abs(swapped[0] - fresh[0]) < TOLERANCE * footprint
    assert swap["v0"][1] == fresh[1]  # v0's host and its engine core are gone, not added to


def test_the_hosted_vllm_engine_empties_its_prefix_cache_when_idle(swap: dict) -> None:
    assert swap["reset"] is True


def test_one_engine_host_at_a_time_with_counted_tokens(swap: dict) -> None:
    assert len(swap["v0_host"]) == 1 and len(swap["swap_hosts"]) == 1
    assert swap["v0_host"] != swap["swap_hosts"]  # v1 runs in a new host; v0's was ended
    assert (
        not psutil.pid_exists(swap["v0_host"][0]) or psutil.Process(swap["v0_host"][0]).status() == "zombie"
    )
    stats: EngineStats = swap["v0_stats"]
    assert stats.calls == 1 and stats.requests == len(REQUESTS)
    assert stats.generated_tokens > 0 and stats.prompt_tokens > 0
    assert swap["same_outputs"]
    assert swap["published"]["models"] == f"actor: v1 ({swap['published']['models'].split('(')[1][:-1]})"
    assert swap["published"]["engine_pids"] == str(swap["swap_hosts"][0])


def test_training_starts_with_inference_memory_released(swap: dict) -> None:
    start, training = swap["start"], swap["training"]
    assert swap["training_loaded"] == 0
    assert training[1] == start[1]  # no engine process left
    assert training[0] - start[0] < 0.05 * (swap["fresh"][0] - start[0])  # nothing of the engine kept
    assert swap["end"][1] == start[1]
