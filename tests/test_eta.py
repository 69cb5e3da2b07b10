"""The run's ETA from its own recorded shards (services/eta.py): synthetic shard records, no model.

A run of 2 iterations, 2 prompt shards; each test writes the shard records a run would have left
(``ShardDone`` with its seconds and counts, then the stage manifest) and checks what the ETA makes
of them: the running stage from its own shards, later stages from what they cost in an earlier
iteration (scaled by this iteration's work once it is counted), stages never run from the dry run's
rates, and an honest floor or no number at all where nothing is known.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from services import estimate as est
from services.eta import RunEta, format_eta, run_eta
from services.progress import RunProgress
from services.runs import create_run
from shared.config import RunConfig
from shared.records import ShardDone, StageSpec
from shared.runtime.artifacts import RunPaths, write_json_atomic
from shared.runtime.shards import num_shards, write_stage_manifest
from shared.stages import pipeline

# iteration 0 as it was recorded: seconds per shard (sharded stages have 2) and the counts
ITER0 = {
    "sample": ([10.0, 10.0], {"prompts": 2}),
    "judge": ([20.0, 20.0], {"negatives": 3}),  # 6 negatives in all
    "refine": ([30.0, 30.0], {"trees": 3}),
    "assemble": ([1.0], {"pairs": 4, "rft": 8}),
    "train_actor": ([50.0], {"records": 4}),
    "train_refiner": ([40.0], {"records": 8}),
}
ITER0_TOTAL = 20 + 40 + 60 + 1 + 50 + 40


@pytest.fixture()
def run(tmp_path: Path) -> tuple[RunPaths, RunConfig]:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(4)))
    config = RunConfig.model_validate(
        {
            "prompts": str(tmp_path / "p.jsonl"),
            "shard_size": 2,
            "iterations": 2,
            "actor": {"model": "tiny"},
            "refiner": {"model": "tiny"},
        }
    )
    return create_run(config, tmp_path / "runs", "eta"), config


def finish(
    paths: RunPaths, config: RunConfig, iteration: int, stage: str, shard: int, seconds: float, counts: dict
) -> None:
    """One shard's completion record, as ``run_stage`` writes it; the manifest once all are done."""
    spec = StageSpec(run_dir=str(paths.root), iteration=iteration, stage=stage, shard=shard)
    record = ShardDone(
        spec=spec, config_hash=config.stage_hash(stage), counts=counts, seconds=seconds, finished_at=0.0
    )
    write_json_atomic(paths.shard_done(iteration, stage, shard), record.as_record())
    if all(paths.shard_done(iteration, stage, k).exists() for k in range(num_shards(paths, stage))):
        write_stage_manifest(paths, iteration, stage)


def finish_stage(paths, config, iteration: int, stage: str, seconds: list[float], counts: dict) -> None:
    for shard, s in enumerate(seconds):
        finish(paths, config, iteration, stage, shard, s, counts)


def finish_iteration_0(paths, config) -> None:
    for stage, (seconds, counts) in ITER0.items():
        finish_stage(paths, config, 0, stage, seconds, counts)


def test_a_first_stage_whose_shards_are_all_done_gives_no_floor_of_zero(run) -> None:
    """Between the last shard's record and the stage's manifest nothing left has a rate: no number."""
    paths, config = run
    for shard in range(2):
        spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="sample", shard=shard)
        record = ShardDone(
            spec=spec, config_hash=config.stage_hash("sample"), counts={}, seconds=9.0, finished_at=0.0
        )
        write_json_atomic(paths.shard_done(0, "sample", shard), record.as_record())
    eta = run_eta(paths, config, now=5.0)
    assert eta.eta_s is None and eta.lower_bound and "iter 0 judge" in eta.unknown
    assert format_eta(eta) == "run: no ETA yet"


def test_with_nothing_recorded_there_is_no_eta(run) -> None:
    paths, config = run
    eta = run_eta(paths, config, now=5.0)
    assert eta.eta_s is None and eta.eta_source is None and eta.lower_bound
    assert eta.unknown[0] == "iter 0 sample" and len(eta.unknown) == 12
    assert format_eta(eta) == "run: no ETA yet"


def test_the_running_stage_is_timed_by_its_own_shards(run) -> None:
    paths, config = run
    finish(paths, config, 0, "sample", 0, 12.0, {"prompts": 2})
    eta = run_eta(paths, config)
    assert eta.eta_s == 12.0 and eta.eta_source == "recorded"  # one shard of 12 s left
    assert eta.lower_bound and "iter 0 judge" in eta.unknown and "iter 0 sample" not in eta.unknown


def test_a_finished_iteration_times_the_next(run) -> None:
    paths, config = run
    finish_iteration_0(paths, config)
    eta = run_eta(paths, config)
    assert eta.eta_s == ITER0_TOTAL and eta.eta_source == "recorded" and not eta.lower_bound
    assert eta.unknown == []


def test_recorded_times_scale_with_this_iterations_work(run) -> None:
    paths, config = run
    finish_iteration_0(paths, config)
    finish_stage(paths, config, 1, "sample", [10.0, 10.0], {"prompts": 2})
    finish_stage(paths, config, 1, "judge", [20.0, 20.0], {"negatives": 1})  # 2 negatives: a third of 6
    eta = run_eta(paths, config)
    assert eta.eta_s == pytest.approx(60 / 3 + 1 + 50 + 40)  # refine scaled; training not counted yet

    finish_stage(paths, config, 1, "refine", [10.0, 10.0], {"trees": 1})
    finish_stage(paths, config, 1, "assemble", [1.0], {"pairs": 8, "rft": 2})  # twice the pairs, 1/4 the rft
    eta = run_eta(paths, config)
    assert eta.eta_s == pytest.approx(50 * 2 + 40 / 4)


def test_stages_never_run_fall_back_to_the_dry_run_estimate(run) -> None:
    paths, config = run
    rates = est.Rates(
        basis="calibrated",
        load_s=2.0,
        per_prompt={s: {"s_per_token": 0.01, "fill": 1.0} for s in ("sample", "judge", "refine")},
        train={s: {"s_per_step": 3.0} for s in ("train_actor", "train_refiner")},
    )
    planned = {(e.iteration, e.stage): e for e in est.estimate(config, 4, rates)}
    eta = run_eta(paths, config, rates)
    expected = sum(e.seconds for e in planned.values() if e.basis != "none")
    assert eta.eta_s == pytest.approx(expected, abs=0.1) and eta.eta_source == "estimate"
    assert eta.lower_bound and eta.unknown == ["iter 0 assemble", "iter 1 assemble"]  # no rate for it

    finish_iteration_0(paths, config)  # iteration 1 now from this run's own record
    eta = run_eta(paths, config, rates)
    assert eta.eta_s == ITER0_TOTAL and eta.eta_source == "recorded"


def test_a_mix_of_recorded_and_estimated_stages_says_so(run) -> None:
    paths, config = run
    rates = est.Rates(
        basis="calibrated",
        per_prompt={s: {"s_per_token": 0.01, "fill": 1.0} for s in ("sample", "judge", "refine")},
        train={s: {"s_per_step": 3.0} for s in ("train_actor", "train_refiner")},
    )
    finish_stage(paths, config, 0, "sample", [10.0, 10.0], {"prompts": 2})
    eta = run_eta(paths, config, rates)
    assert eta.eta_source == "mixed"  # iteration 1's sample from iteration 0, the rest estimated


def test_a_long_run_counts_its_later_iterations_without_walking_them(run) -> None:
    paths, config = run
    long = config.model_copy(update={"iterations": 1000})
    eta = run_eta(paths, long)  # nothing on disk yet: iteration 0, and the 999 after it, unknown
    assert eta.eta_s is None and eta.unknown[:2] == ["iter 0 sample", "iters 1-999 sample"]
    finish_iteration_0(paths, long)
    eta = run_eta(paths, long)
    assert eta.eta_s == 999 * ITER0_TOTAL and eta.eta_source == "recorded" and not eta.lower_bound


def test_a_finished_run_has_nothing_left(run) -> None:
    paths, config = run
    finish_iteration_0(paths, config)
    for stage, (seconds, counts) in ITER0.items():
        finish_stage(paths, config, 1, stage, seconds, counts)
    eta = run_eta(paths, config)
    assert (eta.eta_s, eta.eta_source, eta.unknown) == (0.0, "done", [])
    assert format_eta(eta) == "run: done"


def test_the_eta_counts_down_and_says_when_it_is_a_floor() -> None:
    eta = RunEta(eta_s=100.0, eta_source="recorded", lower_bound=True, computed_at=1000.0)
    assert format_eta(eta, now=1030.0) == "run >= 0:01:10 left (recorded)"
    exact = eta.model_copy(update={"lower_bound": False})
    assert format_eta(exact, now=2000.0) == "run 0:00:00 left (recorded)"


def test_the_progress_line_shows_the_run_eta(run) -> None:
    from rich.console import Console

    paths, config = run
    finish_iteration_0(paths, config)
    order = list(pipeline(config.stages, config.iterations, with_init=False))
    for disabled in (True, False):
        console = Console(record=True, width=220, force_terminal=not disabled)
        eta = partial(run_eta, paths, config)
        with RunProgress(console, order, 2, disabled=disabled, eta=eta) as progress:
            progress.on_shard(1, "sample", 0, 2)
            progress.on_shard(1, "sample", 2, 2)
        text = console.export_text()
        assert "iteration 2 of 2 · sample: done in" in text
        assert f"run 0:03:{ITER0_TOTAL - 180:02d} left (recorded)" in text


def test_an_eta_that_fails_is_no_eta_not_a_failed_run() -> None:
    from rich.console import Console

    def broken() -> RunEta:
        raise ValueError("a record half written")

    console = Console(record=True, width=200)
    with RunProgress(console, [(0, "sample")], 1, disabled=True, eta=broken) as progress:
        progress.on_shard(0, "sample", 1, 1)
    assert "run: no ETA yet" in console.export_text()


def test_the_api_run_view_carries_the_eta(run) -> None:
    from services.api import views

    paths, config = run
    finish_iteration_0(paths, config)
    disk = views.disk_view("eta", paths)
    body = json.loads(views.render_view("eta", paths, {"status": "running"}, disk))
    assert body["eta"]["eta_s"] == ITER0_TOTAL and body["eta"]["eta_source"] == "recorded"
    assert body["eta"]["lower_bound"] is False and body["eta"]["computed_at"] > 0


def test_a_later_eval_costs_what_one_evaluation_cost_at_iteration_0(run) -> None:
    """Iteration 0's eval scores v0 and v1 (two evaluations); each later one scores one version: half."""
    paths, config = run
    config = config.model_copy(update={"stages": [*config.stages, "eval"]})
    finish_iteration_0(paths, config)
    finish_stage(paths, config, 0, "eval", [300.0], {"ifeval_versions": 2, "evaluations_run": 2})
    eta = run_eta(paths, config)
    assert eta.eta_s == pytest.approx(ITER0_TOTAL + 150.0) and not eta.lower_bound


def test_an_eval_manifest_without_the_evaluations_counted_is_taken_as_it_is(run) -> None:
    """A run recorded before evaluations were counted: nothing to scale by, iteration 0's seconds."""
    paths, config = run
    config = config.model_copy(update={"stages": [*config.stages, "eval"]})
    finish_iteration_0(paths, config)
    finish_stage(paths, config, 0, "eval", [300.0], {"ifeval_versions": 2})
    assert run_eta(paths, config).eta_s == pytest.approx(ITER0_TOTAL + 300.0)


def test_a_training_stage_under_way_is_timed_by_its_steps(run) -> None:
    """A training stage's one shard is done only at its end: its logged steps give the pace."""
    import os
    import time

    paths, config = run
    for stage in ("sample", "judge", "refine", "assemble"):
        seconds, counts = ITER0[stage]
        finish_stage(paths, config, 0, stage, seconds, counts)
    started = time.time() - 100
    os.utime(paths.changes, (started, started))
    event = {"ts": started + 100, "event": "train.log", "role": "actor", "step": 10, "max_steps": 50}
    paths.events.write_text(json.dumps(event) + "\n")
    eta = run_eta(paths, config)
    # 10 steps in 100 s: 40 steps left, 400 s, then iteration 1's search stages as recorded (121 s);
    # neither training has a recorded rate yet
    assert eta.eta_s == pytest.approx(400.0 + 121.0, abs=1.0) and eta.lower_bound
    assert "iter 0 train_actor" not in eta.unknown and "iter 0 train_refiner" in eta.unknown


def _fork_of(source: RunPaths, config: RunConfig, kept: list[str]) -> tuple[RunPaths, RunConfig]:
    """A one-iteration fork of ``source`` (its ``fork.json`` as ``spar run --fork`` writes it), with
    iteration 0 done up to its eval stage; ``kept``: the evaluations it took from the source."""
    fork_config = config.model_copy(update={"iterations": 1})
    paths = create_run(fork_config, source.root.parent, "point")
    record = {"source": str(source.root), "reused": [], "evaluations": [{"iteration": 0, "kept": kept}]}
    write_json_atomic(paths.root / "fork.json", record)
    finish_iteration_0(paths, fork_config)
    return paths, fork_config


def test_a_fork_takes_its_sources_cost_of_a_stage_it_has_not_run(run) -> None:
    """A tuning point's eval has no earlier iteration of its own: it costs what the source's did,
    per evaluation, less the evaluations it took from the source (v0's scores)."""
    source, config = run
    config = config.model_copy(update={"stages": [*config.stages, "eval"]})
    finish_iteration_0(source, config)
    finish_stage(source, config, 0, "eval", [300.0], {"evaluations_run": 2})  # IFEval of v0 and v1
    paths, fork_config = _fork_of(source, config, kept=["ifeval:v0"])
    eta = run_eta(paths, fork_config)
    assert eta.eta_s == pytest.approx(150.0) and eta.eta_source == "recorded" and not eta.lower_bound

    # the source evaluated with other settings: its cost says nothing of this eval
    other = fork_config.model_copy(
        update={"evaluation": fork_config.evaluation.model_copy(update={"max_new_tokens": 7})}
    )
    eta = run_eta(paths, other)
    assert eta.eta_s is None and eta.unknown == ["iter 0 eval"]


def test_a_fork_whose_source_is_gone_has_no_eta_for_that_stage(run) -> None:
    source, config = run
    config = config.model_copy(update={"stages": [*config.stages, "eval"]})
    finish_iteration_0(source, config)
    paths, fork_config = _fork_of(source, config, kept=[])
    write_json_atomic(paths.root / "fork.json", {"source": str(source.root.parent / "gone")})
    eta = run_eta(paths, fork_config)
    assert eta.eta_s is None and eta.unknown == ["iter 0 eval"]
