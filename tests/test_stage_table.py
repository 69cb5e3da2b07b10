"""The stage table (shared/stages.py) is the one definition every part of spar reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import RunConfig
from shared.stages import DEFAULT_STAGES, STAGE_TABLE, STAGES, pipeline, stage


def config(**overrides) -> RunConfig:
    return RunConfig.model_validate(
        {"prompts": "p.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}} | overrides
    )


def test_every_stage_has_a_runner_and_a_queue() -> None:
    from shared.runtime.queue import QUEUES, STAGE_QUEUE
    from workers.stages import RUNNERS

    assert set(RUNNERS) == {s.name for s in STAGE_TABLE}
    assert all(STAGE_QUEUE[s.name] == s.queue and s.queue in QUEUES for s in STAGE_TABLE)


def test_the_config_accepts_exactly_the_selectable_stages_in_table_order() -> None:
    assert STAGES == (
        "sample",
        "judge",
        "refine",
        "assemble",
        "iopo_groups",
        "train_actor",
        "train_refiner",
        "eval",
    )
    assert config().stages == list(DEFAULT_STAGES)
    with pytest.raises(ValidationError, match="init"):
        config(stages=["init", "sample"])
    with pytest.raises(ValidationError, match="pipeline order"):
        config(stages=["judge", "sample"])


@pytest.mark.parametrize(
    ("change", "affected"),
    [
        ({"search": {"branching": 2}}, {"refine", "iopo_groups"}),
        ({"sample": {"num_responses": 2}}, {"sample"}),
        ({"judge": {"votes": 3}}, {"judge", "refine", "iopo_groups", "eval"}),
        ({"train_actor": {"beta": 0.2}}, {"train_actor"}),
        ({"data": {"max_pairs": 5}}, {"assemble", "iopo_groups"}),
        ({"seed": 1}, {s.name for s in STAGE_TABLE}),
    ],
)
def test_a_stage_hash_covers_exactly_its_table_sections(change: dict, affected: set[str]) -> None:
    base, changed = config(), config(**change)
    moved = {s.name for s in STAGE_TABLE if base.stage_hash(s.name) != changed.stage_hash(s.name)}
    assert moved == affected


def test_pipeline_runs_stage_zero_once_then_each_iteration_in_order() -> None:
    order = list(pipeline(["sample", "judge"], iterations=2, with_init=True))
    assert order == [(0, "init"), (0, "sample"), (0, "judge"), (1, "sample"), (1, "judge")]
    assert stage("refine").sharded and not stage("assemble").sharded
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        stage("nope")


DONE_JSON = {
    "config_hash": "e1e8449767aac01b",
    "counts": {"prompts": 12, "responses": 36},
    "engine": {"calls": 1, "completions": 36, "generated_tokens": 707, "requests": 12},
    "finished_at": 1796537920.6568086,
    "metrics": {},
    "models": {"actor": "v0 (tiny)"},
    "resolved": {"actor": {"device": "cpu", "dtype": "float32", "engine": "hf"}},
    "seconds": 138.3507919370004,
    "spec": {"iteration": 0, "run_dir": "/runs/tiny", "shard": 0, "stage": "sample"},
    "started_at": 1796537782.1,
}
MANIFEST_JSON = {
    "config_hash": "e1e8449767aac01b",
    "counts": {"prompts": 36, "responses": 108},
    "engine": {"calls": 3, "requests": 36},
    "iteration": 0,
    "metrics": {},
    "models": {"actor": "v0 (tiny)"},
    "resolved": {},
    "run_id": "tiny",
    "shard_seconds": 393.61634925399994,
    "shards": 3,
    "stage": "sample",
    "written_at": 1796538176.0789945,
}


def test_shard_records_keep_their_shape_and_order() -> None:
    """``ShardDone`` and ``StageManifest`` share ``ShardOutput``'s fields; their records keep the
    names and the order they had before (existing runs resume, files are written the same)."""
    from shared.records import ShardDone, StageManifest, StageSpec

    done = ShardDone.from_record(DONE_JSON).as_record()
    assert done == DONE_JSON
    assert list(done) == [
        "spec", "config_hash", "models", "metrics", "counts", "engine", "seconds", "finished_at",
        "started_at", "resolved",
    ]  # fmt: skip
    manifest = StageManifest.from_record(MANIFEST_JSON).as_record()
    assert manifest == MANIFEST_JSON
    assert list(manifest)[:7] == [
        "run_id",
        "iteration",
        "stage",
        "config_hash",
        "models",
        "metrics",
        "shards",
    ]
    spec = StageSpec.model_validate(DONE_JSON["spec"])
    assert list(spec.model_dump()) == ["run_dir", "iteration", "stage", "shard"]  # the queue payload
    assert spec.as_record() == DONE_JSON["spec"]


def test_a_spec_naming_no_stage_is_refused() -> None:
    from shared.records import StageSpec

    with pytest.raises(ValidationError, match="unknown stage"):
        StageSpec(run_dir="/r", iteration=0, stage="sampel", shard=0)
    assert StageSpec(run_dir="/r", iteration=0, stage="init", shard=0).stage == "init"


def test_a_record_older_than_started_at_reads_and_writes_it_as_none() -> None:
    from shared.records import ShardDone

    old = {k: v for k, v in DONE_JSON.items() if k != "started_at"}
    assert ShardDone.from_record(old).as_record() == old | {"started_at": None}
