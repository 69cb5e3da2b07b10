"""All search stages through the real HFEngine on the tiny model, from a config file, as the CLI runs them."""

import json
from pathlib import Path

import pytest
import yaml

from services.cli import main
from services.local import LocalExecutor
from services.runs import create_run, load_config_file
from services.summary import iteration_summary
from shared.runtime.artifacts import read_json, read_jsonl

PROMPTS = [
    "Write a haiku about rain. Use exactly three lines.",
    "List three fruits in lowercase, separated by commas.",
    "Explain gravity in one sentence without commas.",
    "Write a title for a blog post about tea in under six words.",
    "Give two tips for sleeping well as a numbered list.",
    "Describe the sea in exactly two sentences.",
]


@pytest.fixture()
def config_file(tmp_path: Path, tiny_model_path: Path) -> Path:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = {
        "name": "hf",
        "seed": 3,
        "prompts": "prompts.jsonl",
        "shard_size": 3,
        "stages": ["sample", "judge", "refine", "assemble"],
        "actor": {"model": str(tiny_model_path), "hf": {"batch_size": 8}},
        "refiner": {"model": str(tiny_model_path), "hf": {"batch_size": 8}},
        "sample": {"num_responses": 3, "max_new_tokens": 24},
        "judge": {"votes": 3, "max_new_tokens": 40},
        "search": {"branching": 2, "beam": 1, "max_depth": 2, "max_new_tokens": 48},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_three_search_stages_run_through_hf_engine(config_file: Path, tmp_path: Path) -> None:
    paths = create_run(load_config_file(config_file), tmp_path / "runs", "hf")
    executor = LocalExecutor.for_run(paths)
    executor.run()
    assert len(executor.engines.loaded) == 1  # same model and settings: actor and refiner share it
    summary = iteration_summary(paths, 0)
    m = summary["metrics"]
    assert m["prompts"] == 6 and m["responses"] == 18
    judged = [row for k in range(2) for row in read_jsonl(paths.shard(0, "judge", k))]
    labels = [r["label"] for row in judged for r in row["responses"]]
    # the imprinted tiny model produces parseable verdicts of both kinds
    assert {0, 1} <= set(labels)
    assert m["negatives"] == sum(len(row["negatives"]) for row in judged) > 0
    assert m["trees"] == m["negatives"]
    trees = [t for k in range(2) for t in read_jsonl(paths.shard(0, "refine", k))]
    assert all(t["expansions"] <= 4 for t in trees)  # branching 2, beam 1, depth 2
    assert any(len(t["nodes"]) > 1 for t in trees)  # the refiner produced parseable refinements
    pairs = list(read_jsonl(paths.data_file(0, "pairs.jsonl")))
    assert len(pairs) == m["pairs"] == sum(t["status"] == "success" for t in trees)
    for stage in summary["stages"]:
        if stage["stage"] != "assemble":
            assert stage["engine_calls"] > 0 and stage["tokens_generated"] > 0
    manifest = read_json(paths.manifest(0, "sample"))
    assert manifest["models"]["actor"].startswith("v0 (")


def test_same_seed_same_data(config_file: Path, tmp_path: Path) -> None:
    outputs = []
    for run_id in ("a", "b"):
        paths = create_run(load_config_file(config_file), tmp_path / "runs", run_id)
        LocalExecutor.for_run(paths).run()
        outputs.append(
            [paths.shard(0, "judge", 0).read_text(), paths.data_file(0, "pairs.jsonl").read_text()]
        )
    assert outputs[0] == outputs[1]


def test_cli_runs_and_prints_the_summary(config_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    code = main(
        ["run", str(config_file), "--runs-dir", str(tmp_path / "runs"), "--run-id", "cli", "--no-progress"]
    )
    out = capsys.readouterr().out
    assert code == 0
    for metric in (
        "pass rate",
        "negatives",
        "success rate",
        "mean expansions per tree",
        "pairs",
        "engine calls",
    ):
        assert metric in out
    assert "\u2026" not in out  # piped output is wide enough that no cell is cut short
    events = [
        json.loads(line) for line in (tmp_path / "runs" / "cli" / "events.jsonl").read_text().splitlines()
    ]
    assert {"shard.start", "shard.done", "engine.load"} <= {e.get("event") for e in events}
    # resuming a finished run redoes nothing and succeeds
    assert main(["run", "--resume", str(tmp_path / "runs" / "cli"), "--no-progress"]) == 0


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: p.jsonl\nactor: {model: tiny}\nrefiner: {model: tiny}\nsearch: {beam: -1}\n")
    assert main(["run", str(bad), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "search.beam" in err and "Traceback" not in err


def test_report_console_is_wide_when_piped_unless_columns_say_otherwise(monkeypatch) -> None:
    from services.console import PIPE_WIDTH, report_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert report_console().width == PIPE_WIDTH  # pytest captures stdout: not a terminal
    monkeypatch.setenv("COLUMNS", "90")
    assert report_console().width == 90
