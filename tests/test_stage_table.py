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
