"""`spar run ARM.yaml --fork RUN`: an ablation reuses exactly the stages it shares with its source run."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_iterations import mtimes, write_config

from services.cli import main
from services.fork import fork_into, reused_stages, shared_prefix
from services.local import LocalExecutor
from services.runs import create_run, load_config_file
from shared.errors import ConfigError
from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json, read_jsonl
from shared.runtime.versions import METADATA, version_dir
from workers.resolved import resolved_settings

STAGES = ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_model_path: Path):
    """One finished tiny iteration, evaluated: the run every fork below shares stages with."""
    tmp = tmp_path_factory.mktemp("fork-source")
    pairs = tmp / "judge.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"input": f"Say hi {i}.", "output_1": "hi", "output_2": "bye", "label": 1}) + "\n"
            for i in range(2)
        )
    )
    evaluation = {"ifeval_limit": 2, "max_new_tokens": 8, "judge_data": str(pairs)}
    config = load_config_file(write_config(tmp, tiny_model_path, stages=STAGES, evaluation=evaluation))
    paths = create_run(config, tmp / "runs", "source")
    LocalExecutor.for_run(paths).run()
    return tmp, paths


def arm(tmp: Path, source_config: Path, name: str, **changes) -> Path:
    """The source's config with nested ``changes`` (section -> {key: value}) applied."""
    config = yaml.safe_load(source_config.read_text())
    for section, value in changes.items():
        if isinstance(value, dict):
            config[section] = {**config.get(section, {}), **value}
        else:
            config[section] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_objective_ablation_reuses_every_stage_the_actor_training_does_not_reach(
    source_run, tmp_path: Path, monkeypatch
) -> None:
    tmp, source = source_run
    config = arm(tmp, tmp / "config.yaml", "lr", train_actor={"learning_rate": 3e-4})
    target = create_run(load_config_file(config), tmp_path / "runs", "lr")
    reused = fork_into(source, target, resolved_settings)
    # the refiner's training reads the assembled data and refiner v0 only: reused although the
    # actor's training before it in the pipeline is not
    assert reused == [(0, "sample"), (0, "judge"), (0, "refine"), (0, "assemble"), (0, "train_refiner")]
    assert reused_stages(target) == set(reused)
    record = read_json(target.root / FORK_RECORD)
    assert record["source_run_id"] == "source" and record["source"] == str(source.root.resolve())
    assert record["stopped"].startswith("train_actor@0: settings differ")
    # the eval stage scores the new actor v1; the versions both runs share are scored already
    assert record["evaluations"] == [{"iteration": 0, "kept": ["ifeval:v0", "judge:v0", "judge:v1"]}]
    # the reused data is the source's, byte for byte, and linked rather than copied
    for _, stage in reused[:4]:
        for src in source.stage_dir(0, stage).glob("shard_*"):
            dst = target.stage_dir(0, stage) / src.name
            assert dst.read_bytes() == src.read_bytes()
            assert os.stat(dst).st_ino == os.stat(src).st_ino
    assert not version_dir(target, "actor", 1).exists()  # the actor's training was not shared
    assert (version_dir(target, "refiner", 1) / METADATA).read_bytes() == (
        version_dir(source, "refiner", 1) / METADATA
    ).read_bytes()

    import shared.evaluation.ifeval as ifeval
    import shared.evaluation.judge_eval as judge_eval

    scored: list[str] = []
    for module, name in ((ifeval, "evaluate_ifeval"), (judge_eval, "evaluate_judge")):
        real = getattr(module, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            scored.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    before = {p: p.stat().st_mtime_ns for p in (target.root / "iter_0").rglob("shard_*.jsonl")}
    LocalExecutor.for_run(target).run()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after  # nothing reused was recomputed
    assert scored == ["evaluate_ifeval"]  # IFEval of the new actor v1, nothing else
    assert read_json(target.manifest(0, "sample"))["run_id"] == "lr"  # manifests belong to the new run
    meta = read_json(version_dir(target, "actor", 1) / METADATA)
    assert meta["hyperparameters"]["learning_rate"] == 3e-4
    # the actor trained on the very pairs the source assembled
    src_meta = read_json(version_dir(source, "actor", 1) / METADATA)
    assert meta["data"]["sha256"] == src_meta["data"]["sha256"]
    # the taken evaluations are the source's scores, labelled with this run's model paths
    rows = {(r["kind"], r["version"].split()[0]): r for r in read_jsonl(target.shard(0, "eval", 0))}
    src_rows = {(r["kind"], r["version"].split()[0]): r for r in read_jsonl(source.shard(0, "eval", 0))}
    assert (
        set(rows) == set(src_rows) == {("ifeval", "v0"), ("ifeval", "v1"), ("judge", "v0"), ("judge", "v1")}
    )
    for key in (("ifeval", "v0"), ("judge", "v0"), ("judge", "v1")):
        assert {**rows[key], "version": ""} == {**src_rows[key], "version": ""}, key
    assert str(target.root) in rows[("judge", "v1")]["version"]
    metrics, src_metrics = (read_json(p.manifest(0, "eval"))["metrics"] for p in (target, source))
    assert metrics["judge"] == src_metrics["judge"] and metrics["ifeval"][0] == src_metrics["ifeval"][0]
    assert not target.shard(0, "eval", 0).with_name("shard_00000.jsonl.partial").exists()


def test_evaluations_are_taken_only_with_the_same_settings_and_model(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    cases = {
        # IFEval with more tokens is another score; the judge evaluation does not read that setting
        "tokens": ({"evaluation": {"max_new_tokens": 12}}, ["judge:v0", "judge:v1"]),
        # the judge's backend does not enter the held-out judge evaluation; its votes do
        "votes": ({"judge": {"votes": 3}}, ["ifeval:v0"]),
        # another refiner recipe: refiner v1 is another model, actor v1 the same
        "refiner_lr": ({"train_refiner": {"learning_rate": 3e-4}}, ["ifeval:v0", "judge:v0", "ifeval:v1"]),
    }
    for name, (changes, expected) in cases.items():
        target = create_run(load_config_file(arm(tmp, tmp / "config.yaml", name, **changes)), tmp_path, name)
        fork_into(source, target, resolved_settings)
        taken = read_json(target.root / FORK_RECORD)["evaluations"]
        assert [key for t in taken for key in t["kept"]] == expected, name
    # an eval computed with other resolved settings (another engine dtype) is not taken
    other = _copy_run(source, tmp_path / "elsewhere")
    _rewrite_done(other, "eval", lambda record: record["resolved"]["actor"].update(dtype="other"))
    config = arm(tmp, tmp / "config.yaml", "lr2", train_actor={"learning_rate": 3e-4})
    target = create_run(load_config_file(config), tmp_path / "runs", "lr2")
    fork_into(other, target, resolved_settings)
    assert read_json(target.root / FORK_RECORD)["evaluations"] == []


def test_a_changed_stage_and_every_stage_reading_it_are_not_reused(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    cases = {
        # where the pairs come from: assembly differs, so every later stage does too
        "samples": ({"data": {"pairs_from": "samples"}}, ["sample", "judge", "refine"]),
        # the judge's votes change the judgments, hence the refinement trees built on them
        "votes": ({"judge": {"votes": 3}}, ["sample"]),
        # the refiner's training alone: the actor's training (before it in the pipeline) is shared
        "refiner_lr": (
            {"train_refiner": {"learning_rate": 3e-4}},
            ["sample", "judge", "refine", "assemble", "train_actor"],
        ),
        # the actor's objective: the refiner's training reads none of what it changes
        "objective": (
            {"train_actor": {"objective": "sr_dpo"}},
            ["sample", "judge", "refine", "assemble", "train_refiner"],
        ),
        # a pipeline without the refine stage reads other inputs from its second stage on
        "no_refine": ({"stages": ["sample", "judge", "assemble"]}, ["sample", "judge"]),
        "same": ({}, STAGES),
    }
    for name, (changes, expected) in cases.items():
        target = create_run(load_config_file(arm(tmp, tmp / "config.yaml", name, **changes)), tmp_path, name)
        assert [s for _, s in shared_prefix(source, target, resolved_settings)] == expected, name


def _sft_chats(path: Path) -> str:
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Judge {i}."},
                        {"role": "assistant", "content": "Yes"},
                    ]
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    return str(path)


def test_a_stage_0_that_trains_only_the_refiner_shares_the_actors_work(source_run, tmp_path: Path) -> None:
    """The guarded verifier arm (stage 0 for its refiner) forks the sampled-pairs arm (no stage 0):
    actor v0 is the configured model in both, so iteration 0's sampling and v0's IFEval are shared;
    what reads refiner v0, now trained by stage 0, is not."""
    tmp, source = source_run
    chats = _sft_chats(tmp_path / "sft.jsonl")
    train = {"max_steps": 1, "batch_size": 1, "grad_accum": 1, "learning_rate": 1e-4, "max_length": 64}
    config = arm(tmp, tmp / "config.yaml", "init_refiner", init={"refiner_data": chats, "refiner": train})
    target = create_run(load_config_file(config), tmp_path / "runs", "init_refiner")
    assert fork_into(source, target, resolved_settings) == [(0, "sample")]
    record = read_json(target.root / FORK_RECORD)
    assert record["stopped"] == "init@0: the source's pipeline has no such stage"
    assert record["evaluations"] == [{"iteration": 0, "kept": ["ifeval:v0"]}]
    before = {p: p.stat().st_mtime_ns for p in target.stage_dir(0, "sample").glob("shard_*.jsonl")}
    LocalExecutor.for_run(target).run()  # stage 0 runs after the shared sampling, then the rest
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert read_json(version_dir(target, "refiner", 0) / METADATA)["data"]["records"] == 4
    rows = {(r["kind"], r["version"].split()[0]): r for r in read_jsonl(target.shard(0, "eval", 0))}
    src_rows = {(r["kind"], r["version"].split()[0]): r for r in read_jsonl(source.shard(0, "eval", 0))}
    assert {**rows[("ifeval", "v0")], "version": ""} == {**src_rows[("ifeval", "v0")], "version": ""}
    assert set(rows) == set(src_rows)

    # a stage 0 that trains the actor makes another actor v0: nothing is shared
    both = arm(
        tmp,
        tmp / "config.yaml",
        "init_both",
        init={"actor_data": chats, "refiner_data": chats, "refiner": train, "actor": train},
    )
    other = create_run(load_config_file(both), tmp_path / "runs", "init_both")
    assert shared_prefix(source, other, resolved_settings) == []
    # and the other way round: a run without stage 0 forked from one whose stage 0 trains the
    # refiner only shares the sampling too
    plain = create_run(load_config_file(tmp / "config.yaml"), tmp_path / "runs", "plain")
    assert shared_prefix(target, plain, resolved_settings) == [(0, "sample")]


def test_a_shared_training_stage_brings_its_model_version(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    config = arm(tmp, tmp / "config.yaml", "rft", train_refiner={"learning_rate": 3e-4})
    target = create_run(load_config_file(config), tmp_path / "runs", "rft")
    assert (0, "train_actor") in fork_into(source, target, resolved_settings)
    for name in ("model.safetensors", METADATA):
        assert (version_dir(target, "actor", 1) / name).read_bytes() == (
            version_dir(source, "actor", 1) / name
        ).read_bytes()
    assert not version_dir(target, "refiner", 1).exists()


def _copy_run(source: RunPaths, dest: Path) -> RunPaths:
    import shutil

    shutil.copytree(source.root, dest)
    return RunPaths(dest)


def _rewrite_done(paths: RunPaths, stage: str, change) -> None:
    for done in paths.stage_dir(0, stage).glob("shard_*.done.json"):
        record = read_json(done)
        change(record)
        done.write_text(json.dumps(record))


def test_a_stage_computed_with_other_resolved_settings_is_not_reused(source_run, tmp_path: Path) -> None:
    """Same stage hash, but the judge ran on another engine dtype (dtype: auto resolved elsewhere)."""
    tmp, source = source_run
    other = _copy_run(source, tmp_path / "elsewhere")
    record = read_json(other.shard_done(0, "judge", 0))
    assert record["resolved"]["refiner"]["dtype"]  # every inference shard records what it ran with

    def on_another_cpu(record: dict) -> None:
        record["resolved"]["refiner"]["dtype"] = "some-other-dtype"

    _rewrite_done(other, "judge", on_another_cpu)
    target = create_run(load_config_file(tmp / "config.yaml"), tmp_path / "runs", "same-elsewhere")
    assert fork_into(other, target, resolved_settings) == [(0, "sample")]
    stopped = read_json(target.root / FORK_RECORD)["stopped"]
    assert stopped.startswith("judge@0: resolved differently") and "some-other-dtype" in stopped


def test_a_stage_recorded_before_resolved_settings_existed_is_not_reused(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    old = _copy_run(source, tmp_path / "old")
    _rewrite_done(old, "sample", lambda record: record.pop("resolved"))
    target = create_run(load_config_file(tmp / "config.yaml"), tmp_path / "runs", "from-old")
    assert fork_into(old, target, resolved_settings) == []
    assert "does not record its resolved settings" in read_json(target.root / FORK_RECORD)["stopped"]


def _with_other_judge_data(source: RunPaths, dest: Path) -> RunPaths:
    """A copy of ``source`` whose record says its held-out pairs had other contents (the same path,
    the file edited in place between the source run and the fork)."""
    other = _copy_run(source, dest)
    record = read_json(other.config)
    assert record["inputs"]["evaluation.judge_data"]["sha256"]  # recorded when the run was made
    record["inputs"]["evaluation.judge_data"]["sha256"] = "0" * 64
    other.config.write_text(json.dumps(record))
    return other


def test_a_stage_whose_data_file_changed_in_place_is_not_reused(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    edited = _with_other_judge_data(source, tmp_path / "edited")
    target = create_run(load_config_file(tmp / "config.yaml"), tmp_path / "runs", "same")
    reused = fork_into(edited, target, resolved_settings)
    # every stage but the one reading the held-out pairs: the eval stage scores against them
    assert (0, "eval") not in reused and (0, "train_actor") in reused
    stopped = read_json(target.root / FORK_RECORD)["stopped"]
    assert stopped.startswith("eval@0: evaluation.judge_data: the file's content differs")
    # its IFEval scores read no data file: taken; the judge's accuracies were on other pairs
    taken = read_json(target.root / FORK_RECORD)["evaluations"]
    assert [key for t in taken for key in t["kept"]] == ["ifeval:v0", "ifeval:v1"]
    # a source made before contents were recorded is compared by path, as before
    old = _copy_run(source, tmp_path / "old-record")
    record = read_json(old.config)
    del record["inputs"]
    old.config.write_text(json.dumps(record))
    again = create_run(load_config_file(tmp / "config.yaml"), tmp_path / "runs", "same-old")
    assert (0, "eval") in fork_into(old, again, resolved_settings)


def test_the_same_data_files_at_another_path_are_reused_by_content(source_run, tmp_path: Path) -> None:
    """A run made in another checkout: its held-out pairs lie elsewhere, so the eval stage's hash
    differs, but the file is the same bytes: the stage is the same computation."""
    tmp, source = source_run
    moved = tmp_path / "checkout" / "judge.jsonl"
    moved.parent.mkdir()
    shutil.copy(tmp / "judge.jsonl", moved)
    config = load_config_file(arm(tmp, tmp / "config.yaml", "moved", evaluation={"judge_data": str(moved)}))
    assert config.stage_hash("eval") != load_config_file(tmp / "config.yaml").stage_hash("eval")
    target = create_run(config, tmp_path / "runs", "moved")
    source_done = source.shard_done(0, "eval", 0).read_bytes()
    reused = fork_into(source, target, resolved_settings)
    assert (0, "eval") in reused and read_json(target.root / FORK_RECORD)["stopped"] is None
    # the linked record now carries this run's hash; the source's record is untouched
    assert read_json(target.shard_done(0, "eval", 0))["config_hash"] == config.stage_hash("eval")
    assert source.shard_done(0, "eval", 0).read_bytes() == source_done
    assert target.shard(0, "eval", 0).read_bytes() == source.shard(0, "eval", 0).read_bytes()
    before = mtimes(target.root / "iter_0")
    LocalExecutor.for_run(target).run()  # every shard is found done: nothing runs again
    assert {k: v for k, v in mtimes(target.root / "iter_0").items() if "shard_" in k} == {
        k: v for k, v in before.items() if "shard_" in k
    }
    # other contents at the other path: not the same computation
    moved.write_text(moved.read_text() + moved.read_text())
    other = create_run(config, tmp_path / "runs", "moved-edited")
    assert (0, "eval") not in fork_into(source, other, resolved_settings)


def test_other_prompts_share_nothing(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "Write one sentence about rain."}) + "\n")
    target = create_run(
        load_config_file(arm(tmp, tmp / "config.yaml", "other", prompts=str(other))), tmp_path, "o"
    )
    assert fork_into(source, target, resolved_settings) == []
    assert read_json(target.root / FORK_RECORD)["reused"] == []


def test_fork_refuses_a_run_with_work_of_its_own(source_run, tmp_path: Path) -> None:
    tmp, source = source_run
    with pytest.raises(ConfigError, match="itself"):
        fork_into(source, source, resolved_settings)
    target = create_run(load_config_file(tmp / "config.yaml"), tmp_path, "busy")
    target.stage_dir(0, "sample").mkdir(parents=True)
    with pytest.raises(ConfigError, match="fork only into a new run"):
        fork_into(source, target, resolved_settings)


def test_the_cli_forks_and_rejects_fork_with_resume(source_run, tmp_path: Path, capsys) -> None:
    tmp, source = source_run
    config = arm(tmp, tmp / "config.yaml", "cli", train_actor={"learning_rate": 2e-4}, stages=STAGES[:5])
    code = main(
        [
            "run",
            str(config),
            "--fork",
            str(source.root),
            "--runs-dir",
            str(tmp_path),
            "--run-id",
            "cli",
            "--no-progress",
        ]
    )
    assert code == 0
    err = capsys.readouterr()
    assert "forked from source: reusing sample@0, judge@0, refine@0, assemble@0" in err.out + err.err
    assert "where the time went" in err.out + err.err and "train_actor" in err.out + err.err
    assert (version_dir(RunPaths(tmp_path / "cli"), "actor", 1) / METADATA).exists()
    code = main(["run", "--resume", str(tmp_path / "cli"), "--fork", str(source.root)])
    assert code == 2
    assert "cannot be combined with --resume" in "".join(capsys.readouterr())


def test_the_time_breakdown_sums_stages_over_iterations() -> None:
    from services.cli import time_breakdown

    text = time_breakdown({(0, "sample"): 2.0, (0, "judge"): 3.0, (1, "sample"): 4.0}, [1.5, 0.5], 10.0)
    assert text == (
        "where the time went (10.0 s): sample 6.0 s, judge 3.0 s; of which engine loads 2.0 s (2); "
        "outside stages 1.0 s"
    )
