"""`spar status RUN_DIR`: where a background run stands, read from its directory alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from services.cli import main
from services.runs import create_run, load_config_file
from services.status_cli import run_status
from shared.records import ShardOutput
from shared.runtime.artifacts import RunPaths, write_json_atomic
from shared.runtime.shards import StageSpec, load_config, write_stage_manifest
from shared.stages import pipeline
from workers.stages.common import record_done


def _run(tmp_path: Path, iterations: int = 2) -> RunPaths:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(6)))
    config = tmp_path / "arm.yaml"
    config.write_text(
        f"name: arm\nprompts: {prompts}\nshard_size: 2\niterations: {iterations}\n"
        "actor: {model: tiny}\nrefiner: {model: tiny}\n"
    )
    return create_run(load_config_file(config), tmp_path / "runs", "arm-guarded")


def _finish(paths: RunPaths, iteration: int, stage: str, shards: range) -> None:
    config = load_config(paths)
    for shard in shards:
        spec = StageSpec(run_dir=str(paths.root), iteration=iteration, stage=stage, shard=shard)
        paths.shard(iteration, stage, shard).parent.mkdir(parents=True, exist_ok=True)
        paths.shard(iteration, stage, shard).write_text("")
        record_done(paths, spec, config, ShardOutput(counts={"prompts": 2}), seconds=60.0)


def test_status_names_the_stage_its_shards_and_the_items_a_running_shard_kept(tmp_path: Path, capsys) -> None:
    paths = _run(tmp_path)
    order = list(pipeline(load_config(paths).stages, 2, with_init=False))
    _finish(paths, 0, "sample", range(3))
    write_stage_manifest(paths, 0, "sample")
    _finish(paths, 0, "judge", range(3))
    write_stage_manifest(paths, 0, "judge")
    _finish(paths, 0, "refine", range(1))  # shard 0 done, shard 1 has kept two trees so far
    partial = paths.shard(0, "refine", 1).with_name("shard_00001.jsonl.partial")
    partial.write_text('{"key": "p2#0"}\n{"key": "p3#1"}\n')
    hour_ago = time.time() - 3600  # the journal notes finished shards only; the kept trees are newer
    os.utime(paths.root / ".changes", (hour_ago, hour_ago))

    view = run_status(paths.root)
    assert not view.finished and view.at is not None
    assert (view.at.iteration, view.at.stage, view.at.position, view.at.stages) == (
        0,
        "refine",
        3,
        len(order),
    )
    assert (view.at.shards_done, view.at.shards, view.at.kept_items) == (1, 3, 2)
    assert view.name == "arm" and view.run_id == "arm-guarded"
    assert view.last_change_s is not None and view.last_change_s < 600  # the partial file's time
    assert view.eta_s is not None and view.eta_s > 0  # two shards of refine left, at its recorded rate

    assert main(["status", str(paths.root)]) == 0
    out = capsys.readouterr().out
    assert f"stage 3 of {len(order)} · iteration 1 of 2 · refine: 1/3 shards done, 2 items kept" in out
    assert "arm-guarded (arm)" in out and "left (" in out

    assert main(["status", str(paths.root), "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["at"]["stage"] == "refine" and record["at"]["kept_items"] == 2


def test_status_of_a_finished_run_gives_its_last_evaluation(tmp_path: Path, capsys) -> None:
    paths = _run(tmp_path, iterations=1)
    for iteration, stage in pipeline(load_config(paths).stages, 1, with_init=False):
        write_json_atomic(paths.manifest(iteration, stage), {"counts": {}, "engine": {}})
    metrics = {
        "ifeval": [
            {"version": "v0", "prompt_loose": 0.2, "prompt_strict": 0.19},
            {"version": "v1", "prompt_loose": 0.25, "prompt_strict": 0.2},
        ],
        "judge": [{"version": "v1", "accuracy": 0.125}],
    }
    write_json_atomic(paths.manifest(0, "eval"), {"counts": {}, "engine": {}, "metrics": metrics})
    view = run_status(paths.root)
    assert view.finished and view.at is None
    assert view.last_eval == {
        "iteration": 0,
        "ifeval": {"version": "v1", "prompt_loose": 25.0, "prompt_strict": 20.0},
        "judge": {"version": "v1", "accuracy": 12.5},
    }
    assert main(["status", str(paths.root)]) == 0
    out = capsys.readouterr().out
    assert "finished: all 1 iterations" in out
    assert "actor v1 IFEval prompt loose 25.0%, strict 20.0% · refiner v1 judge pairwise 12.5%" in out


def test_status_of_a_tuning_run_gives_its_validation_score(tmp_path: Path, capsys) -> None:
    """A recipe-tuning run scores only the validation split (never IFEval): that is its last eval."""
    paths = _run(tmp_path, iterations=1)
    for iteration, stage in pipeline(load_config(paths).stages, 1, with_init=False):
        write_json_atomic(paths.manifest(iteration, stage), {"counts": {}, "engine": {}})
    metrics = {
        "ifeval": [],
        "judge": [],
        "validation": [
            {"version": "v0", "prompt_loose": 0.3, "prompt_strict": 0.29},
            {"version": "v1", "prompt_loose": 0.325, "prompt_strict": 0.3208},
        ],
    }
    write_json_atomic(paths.manifest(0, "eval"), {"counts": {}, "engine": {}, "metrics": metrics})
    assert run_status(paths.root).last_eval == {
        "iteration": 0,
        "validation": {"version": "v1", "prompt_loose": 32.5, "prompt_strict": 32.1},
    }
    assert main(["status", str(paths.root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "last eval" in x)
    assert line.endswith("last eval (iteration 1): actor v1 validation prompt loose 32.5%, strict 32.1%")


def test_status_of_a_folder_that_is_no_run_says_so(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path)]) == 2
    assert "is not a run directory" in " ".join("".join(capsys.readouterr()).split())


def test_status_of_a_missing_folder_fails_cleanly(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in " ".join("".join(capsys.readouterr()).split())


def test_status_gives_the_step_a_running_training_stage_reached(tmp_path: Path, capsys) -> None:
    """A training stage has one shard, done only at its end: the step its trainer last logged
    (``train.log`` in events.jsonl) is its progress, and counts as a change of the run."""
    paths = _run(tmp_path)
    for stage in ("sample", "judge", "refine", "assemble"):
        _finish(paths, 0, stage, range(1 if stage == "assemble" else 3))
        write_stage_manifest(paths, 0, stage)
    assembled = time.time() - 3600
    os.utime(paths.root / ".changes", (assembled, assembled))

    def step(role: str, k: int, ts: float) -> str:
        return json.dumps({"ts": ts, "event": "train.log", "role": role, "step": k, "max_steps": 50}) + "\n"

    with paths.events.open("a") as f:
        f.write(step("actor", 50, assembled - 600))  # an earlier training's last step: not this one's
    view = run_status(paths.root)
    assert view.at is not None and view.at.stage == "train_actor" and view.at.step is None
    assert view.last_change_s is not None and view.last_change_s >= 3600

    with paths.events.open("a") as f:
        f.write(step("actor", 7, time.time() - 30))
        f.write(step("refiner", 9, time.time() - 20))  # the other role: another stage's step
        f.write('{"ts": 1, "event": "train.log", "ro')  # a line being written
    view = run_status(paths.root)
    assert (view.at.step, view.at.max_steps) == (7, 50)
    assert view.last_change_s is not None and view.last_change_s < 600
    assert main(["status", str(paths.root)]) == 0
    assert "· train_actor: 0/1 shards done, step 7 of 50" in capsys.readouterr().out
