"""Data files a run reads after it was created (SFT data, held-out pairs, validation prompts) are
pinned by content: an in-place edit stops the run with the field and the fix, never mixes inputs."""

import json
from pathlib import Path

import pytest
from test_iterations import write_config

from services.cli import main
from services.runs import create_run, load_config_file
from shared.errors import InputChangedError
from shared.records import StageSpec
from shared.runtime.artifacts import RunPaths, file_sha256, read_json
from shared.runtime.data_inputs import (
    DATA_FIELDS,
    check_inputs,
    differing_records,
    recorded_inputs,
    stage_data_fields,
)
from shared.stages import STAGE_TABLE
from workers.stages import run_stage


def _pairs(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"input": f"Say hi {i}.", "output_1": "hi", "output_2": "bye", "label": 1}) + "\n"
            for i in range(n)
        )
    )
    return path


def _run(tmp_path: Path, model: Path, name: str = "r", n_pairs: int = 2) -> tuple[RunPaths, Path]:
    pairs = _pairs(tmp_path / "judge.jsonl", n_pairs)
    evaluation = {"ifeval_limit": 2, "max_new_tokens": 8, "judge_data": str(pairs)}
    config = load_config_file(write_config(tmp_path, model, stages=["sample", "eval"], evaluation=evaluation))
    return create_run(config, tmp_path / "runs", name), pairs


def test_the_stage_table_names_every_data_file_a_stage_reads() -> None:
    assert stage_data_fields("init") == ("init.actor_data", "init.refiner_data")
    assert stage_data_fields("eval") == ("evaluation.judge_data", "evaluation.validation_prompts")
    assert stage_data_fields("sample") == ()  # its prompts were split into the run at creation
    assert set(DATA_FIELDS) == {f for s in STAGE_TABLE for f in stage_data_fields(s.name)}


def test_a_new_run_records_each_data_file_by_content(tmp_path: Path, tiny_model_path: Path) -> None:
    paths, pairs = _run(tmp_path, tiny_model_path)
    inputs = read_json(paths.config)["inputs"]
    assert inputs == {
        "evaluation.judge_data": {
            "path": str(pairs.resolve()),
            "sha256": file_sha256(pairs),
            "bytes": pairs.stat().st_size,
        }
    }
    check_inputs(paths)  # unchanged: nothing to say


def test_an_edited_or_removed_data_file_stops_the_stage_that_reads_it(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    paths, pairs = _run(tmp_path, tiny_model_path)
    _pairs(pairs, 3)  # edited in place after the run began
    with pytest.raises(InputChangedError) as caught:
        check_inputs(paths)
    message = str(caught.value)
    assert message.startswith(f"evaluation.judge_data: {pairs.resolve()} changed since the run was created")
    assert f"--fork {paths.root}" in message and "put the original back" in message
    check_inputs(paths, stage_data_fields("sample"))  # a stage that does not read it goes on
    # the worker checks before the stage runs: no output, no completion record
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="eval", shard=0)
    with pytest.raises(InputChangedError, match="evaluation.judge_data"):
        run_stage(paths, spec, engines=None)  # type: ignore[arg-type]
    assert not paths.shard_done(0, "eval", 0).exists() and not paths.shard(0, "eval", 0).exists()
    pairs.unlink()
    with pytest.raises(InputChangedError, match="no longer exists"):
        check_inputs(paths)
    _pairs(pairs, 2)  # the original back: the run may go on
    check_inputs(paths)


def test_resume_refuses_an_edited_data_file_before_any_work(
    tmp_path: Path, tiny_model_path: Path, capsys
) -> None:
    paths, pairs = _run(tmp_path, tiny_model_path)
    _pairs(pairs, 5)
    code = main(["run", "--resume", str(paths.root), "--no-progress"])
    out = "".join(capsys.readouterr())
    assert code == 2 and "evaluation.judge_data" in out and "changed since the run was created" in out
    assert not (paths.root / "iter_0").exists()  # nothing ran


def test_two_runs_differ_only_where_both_recorded_other_contents(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, _ = _run(tmp_path / "a", tiny_model_path, "a")
    b, _ = _run(tmp_path / "b", tiny_model_path, "b")
    ra, rb = recorded_inputs(a), recorded_inputs(b)
    assert differing_records(ra, rb, DATA_FIELDS) == []  # other paths, the same contents
    c, _ = _run(tmp_path / "b", tiny_model_path, "c", n_pairs=3)  # made after b's file was edited
    rc = recorded_inputs(c)
    assert differing_records(ra, rc, DATA_FIELDS) == ["evaluation.judge_data"]
    assert differing_records(ra, rc, stage_data_fields("sample")) == []


def test_a_run_made_before_contents_were_recorded_is_not_checked(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    paths, pairs = _run(tmp_path, tiny_model_path)
    record = read_json(paths.config)
    del record["inputs"]
    paths.config.write_text(json.dumps(record))
    _pairs(pairs, 3)
    check_inputs(paths)  # by path only, as before
    (tmp_path / "n").mkdir()
    newer, _ = _run(tmp_path / "n", tiny_model_path, "n")
    old, new = recorded_inputs(paths), recorded_inputs(newer)
    # one side unrecorded: left to the hash
    assert old is None and differing_records(old, new, DATA_FIELDS) == []


def test_the_file_checked_is_the_one_the_config_names_not_the_records_path(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """A config.json written by someone else may name any path in its record: only the config's own
    (confined) path is ever read."""
    paths, _ = _run(tmp_path, tiny_model_path)
    elsewhere = tmp_path / "secret.txt"
    elsewhere.write_text("not a data file of this run\n")
    record = read_json(paths.config)
    record["inputs"]["evaluation.judge_data"]["path"] = str(elsewhere)
    paths.config.write_text(json.dumps(record))
    check_inputs(paths)  # the config's file is unchanged: nothing to say, nothing else read
