"""Experiment tracking (shared/runtime/tracking.py): ``report_to`` of each training section, the check of the
tracker's package before a run starts, and the per-iteration scalars written for TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import ActorTrainConfig, RunConfig, SftConfig
from shared.errors import ConfigError
from shared.runtime import tracking

BASE: dict[str, Any] = {
    "prompts": "p.jsonl",
    "actor": {"model": "tiny"},
    "refiner": {"model": "tiny"},
    "init": {"actor_data": "a.jsonl", "refiner_data": "r.jsonl"},
}


def _config(**sections: Any) -> RunConfig:
    data = {**BASE, **sections}
    return RunConfig.model_validate(data)


@pytest.mark.parametrize("stage", ["train_actor", "train_refiner", "init"])
def test_report_to_leaves_every_stage_hash_unchanged(stage: str) -> None:
    """Turning tracking on in a running experiment must keep its finished stages valid."""
    plain = _config()
    # (save_minutes rides along: when a training checkpoints by the clock changes no model either)
    tracked = _config(
        train_actor={"report_to": "tensorboard", "save_minutes": 2.5},
        # (a section given explicitly keeps the other defaults of its class: the refiner's 5 epochs come
        # from RunConfig's default section, so they are repeated here)
        train_refiner={"report_to": ["wandb", "mlflow"], "epochs": 5, "save_minutes": None},
        init={
            **BASE["init"],
            "actor": {"report_to": "trackio", "save_minutes": 60},
            "refiner": {"report_to": ["tensorboard"], "epochs": 5},
        },
    )
    assert tracked.stage_hash(stage) == plain.stage_hash(stage)
    # ... while a setting that changes the model does change it (the comparison can fail)
    changed = _config(
        train_actor={"learning_rate": 1e-5},
        train_refiner={"learning_rate": 1e-5},
        init={**BASE["init"], "actor": {"learning_rate": 1e-5}},
    )
    assert changed.stage_hash(stage) != plain.stage_hash(stage)


def test_report_to_accepts_one_name_or_a_list_and_suggests_a_fix_for_a_typo() -> None:
    assert ActorTrainConfig().trackers() == []
    assert ActorTrainConfig(report_to="tensorboard").trackers() == ["tensorboard"]
    assert SftConfig(report_to=["wandb", "none", "wandb"]).trackers() == ["wandb"]
    with pytest.raises(ValueError, match=r"did you mean 'tensorboard'\?"):
        ActorTrainConfig(report_to="tensorbord")
    with pytest.raises(ValueError, match="unknown tracker 'xyzzy'"):
        ActorTrainConfig(report_to=["wandb", "xyzzy"])


def test_a_missing_tracker_package_names_the_field_and_the_pip_package(monkeypatch) -> None:
    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    with pytest.raises(ConfigError) as caught:
        tracking.check_trackers(SftConfig(report_to=["comet_ml"]), "train_refiner")
    message = str(caught.value)
    assert "train_refiner.report_to" in message and "pip install comet-ml" in message
    tracking.check_trackers(SftConfig(), "train_refiner")  # none needs nothing
    monkeypatch.setattr(tracking, "_installed", lambda module: module == "tensorboardX")
    tracking.check_trackers(ActorTrainConfig(report_to="tensorboard"), "train_actor")  # either writer


def test_spar_run_refuses_a_missing_tracker_before_a_run_dir(tmp_path, capsys, monkeypatch) -> None:
    from services.cli import main

    monkeypatch.setattr(tracking, "_installed", lambda module: False)
    (tmp_path / "p.jsonl").write_text('{"prompt": "Say hi."}\n')
    config = tmp_path / "tracked.yaml"
    config.write_text("prompts: p.jsonl\nactor: {model: tiny}\nrefiner: {model: tiny}\n")
    runs = tmp_path / "runs"
    code = main(["run", str(config), "--runs-dir", str(runs), "--set", "train_actor.report_to=wandb"])
    out = capsys.readouterr()
    assert code == 2
    assert "train_actor.report_to" in out.err and "pip install wandb" in out.err
    assert not runs.exists()


def test_trainers_get_report_to_a_run_name_and_a_lasting_tb_folder(tmp_path, monkeypatch) -> None:
    from trl import SFTConfig

    from workers.training.arguments import common_training_kwargs

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    checkpoints = tmp_path / "run-1" / "checkpoints" / "refiner-v2"
    _, plain = common_training_kwargs(SftConfig(), tmp_path / "out", 0, checkpoints)
    assert plain["report_to"] == "none" and "run_name" not in plain
    cfg = SftConfig(report_to=["tensorboard", "wandb"])
    _, kwargs = common_training_kwargs(cfg, tmp_path / "out", 0, checkpoints)
    assert kwargs["report_to"] == ["tensorboard", "wandb"]
    assert kwargs["run_name"] == "run-1/refiner-v2"
    # not under the checkpoint folder, which is removed once the version is published
    lasting = tmp_path / "run-1" / "tracking" / "refiner-v2"
    assert Path(tracking.os.environ["TENSORBOARD_LOGGING_DIR"]) == lasting
    args = SFTConfig(**kwargs)  # TrainingArguments takes them as they are
    assert args.report_to == ["tensorboard", "wandb"] and args.run_name == "run-1/refiner-v2"


class _Writer:
    """Records what a SummaryWriter is given (the suite's environment has no tensorboard package)."""

    def __init__(self, log_dir: Path, calls: list) -> None:
        self.log_dir = log_dir
        self.calls = calls

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.calls.append((self.log_dir, tag, value, global_step))

    def close(self) -> None:
        self.calls.append("closed")


def test_per_iteration_metrics_go_to_tensorboard_under_the_run(tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(tracking, "summary_writer", lambda log_dir: _Writer(log_dir, calls))
    judge = {"counts": {"pass": 3, "fail": 1, "negatives": 1}}
    evaluation = {
        "metrics": {
            "ifeval": [{"version": "v1", "prompt_strict": 0.25, "n": 4}],
            "judge": [{"version": "v1", "accuracy": 0.75, "n": 8}],
        }
    }
    tracking.log_stage_scalars(tmp_path, _config(), "judge", 0, judge)
    assert calls == []  # report_to none: nothing written
    tracked = _config(train_actor={"report_to": "tensorboard"})
    tracking.log_stage_scalars(tmp_path, tracked, "judge", 2, judge)
    tracking.log_stage_scalars(tmp_path, tracked, "eval", 0, evaluation)
    folder = tmp_path / "tracking" / "iterations"
    assert calls == [
        (folder, "judge/pass_rate", 0.75, 2),
        (folder, "judge/negatives", 1.0, 2),
        "closed",
        (folder, "eval/ifeval_prompt_strict", 0.25, 1),
        (folder, "eval/judge_accuracy", 0.75, 1),
        "closed",
    ]


def test_stage_scalars_cover_tree_success_pairs_and_losses() -> None:
    assert tracking.stage_scalars("refine", 1, {"counts": {"trees": 4, "successes": 1}}) == [
        ("refine/tree_success", 0.25, 1),
        ("refine/trees", 4.0, 1),
    ]
    assert tracking.stage_scalars("assemble", 0, {"counts": {"pairs": 5, "rft": 9}}) == [
        ("assemble/pairs", 5.0, 0),
        ("assemble/rft_examples", 9.0, 0),
    ]
    train = {"metrics": {"loss_curve": [0.69, 0.5, 0.31]}}
    assert tracking.stage_scalars("train_actor", 0, train) == [
        ("train_actor/first_loss", 0.69, 0),
        ("train_actor/last_loss", 0.31, 0),
    ]


def test_a_failing_tracker_never_fails_the_stage(tmp_path, monkeypatch, caplog) -> None:
    def broken(log_dir: Path) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(tracking, "summary_writer", broken)
    tracked = _config(train_refiner={"report_to": "tensorboard"})
    tracking.log_stage_scalars(tmp_path, tracked, "assemble", 0, {"counts": {"pairs": 1}})
    assert any(r.getMessage() == "tracking.write_failed" for r in caplog.records)


def test_a_tiny_run_writes_tensorboard_scalars_that_read_back(tmp_path, tiny_model_path, monkeypatch) -> None:
    """report_to: [tensorboard] in a real run (scripted generations, real DPO on the tiny model):
    the event files are read back offline with TensorBoard's own reader, and the per-iteration
    numbers are the manifests' numbers, all under one run name (``tracking/iterations``)."""
    import json

    import yaml
    from scripted import ScriptedEngine, no, yes

    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:  # never a skip: the reader is what this test is about
        raise AssertionError("tensorboard is missing: it is in the dev extra; run `make install`") from exc

    from services.local import LocalExecutor
    from services.runs import create_run, load_config_file
    from shared.runtime.artifacts import read_json

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"Task {i}."}) + "\n" for i in range(4)))
    train = {"max_steps": 2, "batch_size": 1, "max_length": 128, "learning_rate": 1e-4, "warmup_ratio": 0.0}
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tb",
                "prompts": "p.jsonl",
                "actor": {"model": str(tiny_model_path)},
                "refiner": {"model": str(tiny_model_path)},
                "sample": {"num_responses": 2},
                "judge": {"votes": 1},
                "stages": ["sample", "judge", "refine", "assemble", "train_actor"],
                "train_actor": {**train, "report_to": ["tensorboard"]},
            }
        )
    )
    paths = create_run(load_config_file(tmp_path / "c.yaml"), tmp_path / "runs", "tb")

    class Provider:
        engine = ScriptedEngine(
            judge_fn=lambda p, r, i, k: yes() if r.startswith("answer 0") or "/" in r else no()
        )

        def engine_for(self, role, version):
            return self.engine

        def release(self):
            pass

    LocalExecutor(paths, Provider()).run()
    folder = paths.root / "tracking" / "iterations"
    assert list(folder.glob("events.out.tfevents.*")), "no event file written"
    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    judge = read_json(paths.manifest(0, "judge"))["counts"]
    pairs = read_json(paths.manifest(0, "assemble"))["counts"]["pairs"]
    curve = read_json(paths.manifest(0, "train_actor"))["metrics"]["loss_curve"]
    assert pairs > 0 and len(curve) == 2
    expected = {
        "judge/pass_rate": judge["pass"] / (judge["pass"] + judge["fail"]),
        "assemble/pairs": float(pairs),
        "train_actor/first_loss": curve[0],
        "train_actor/last_loss": curve[-1],
    }
    for tag, value in expected.items():
        assert tag in scalars, (tag, sorted(scalars))
        [point] = scalars[tag]
        assert point.step == 0 and point.value == pytest.approx(value, rel=1e-6), tag
    # the trainer's own curve sits beside it, one folder per trained version
    trainer = EventAccumulator(str(paths.root / "tracking" / "actor-v1"))
    trainer.Reload()
    assert any("loss" in tag for tag in trainer.Tags()["scalars"]), trainer.Tags()
