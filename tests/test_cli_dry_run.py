"""spar run --dry-run and the checks before a run directory exists; help on every flag; honest progress."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services import estimate as est
from services.cli import _parser, main
from services.progress import RunProgress, zero_lr_steps, zero_lr_warning
from services.runs import load_config_file

PROMPTS = 5


def _config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Say hi {i}."}) + "\n" for i in range(PROMPTS))
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: dry\nprompts: p.jsonl\nactor: {model: tiny}\nrefiner: {model: tiny}\n"
        "sample: {num_responses: 3, max_new_tokens: 40}\njudge: {votes: 3, max_new_tokens: 20}\n" + extra
    )
    return path


def test_a_missing_model_folder_fails_before_any_run_directory(tmp_path, capsys) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("actor: {model: tiny}", "actor: {model: models/nope}"))
    runs = tmp_path / "runs"
    for extra in ([], ["--dry-run"]):
        code = main(["run", str(config), "--runs-dir", str(runs), "--no-progress", *extra])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2, err
        assert "actor.model:" in err and str(tmp_path / "models" / "nope") in err
        assert not runs.exists()  # nothing half-made for --resume to repeat


def test_a_missing_accelerate_config_names_the_field(tmp_path, capsys) -> None:
    config = _config(tmp_path, "train_actor: {accelerate_config: acc.yaml}\n")
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "train_actor.accelerate_config:" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()


def _recorded(config_path: Path, cache: Path) -> est.Rates:
    """A record as a finished 10-prompt run of these models would have left it."""
    config = load_config_file(config_path)
    rates = est.Rates(
        basis="recorded",
        load_s=2.0,
        per_prompt={
            "sample": {
                "generations": 3.0,
                "tokens_per_generation": 30.0,
                "s_per_token": 0.01,
                "wall_per_prompt": 1.0,
            },
            "judge": {
                "generations": 9.0,
                "tokens_per_generation": 15.0,
                "s_per_token": 0.01,
                "wall_per_prompt": 2.0,
            },
            "refine": {
                "generations": 40.0,
                "tokens_per_generation": 25.0,
                "s_per_token": 0.01,
                "wall_per_prompt": 6.0,
            },
        },
        train={
            "train_actor": {"steps_per_prompt": 0.2, "s_per_step": 3.0, "wall": 6.0},
            "train_refiner": {"steps_per_prompt": 0.5, "s_per_step": 2.0, "wall": 10.0},
        },
    )
    path = est.record_path(config, cache)
    path.parent.mkdir(parents=True)
    path.write_text(rates.model_dump_json())
    return rates


def test_dry_run_prints_the_config_and_an_estimate_and_writes_no_run(tmp_path, capsys, monkeypatch) -> None:
    config = _config(tmp_path)
    cache = tmp_path / "cache"
    _recorded(config, cache)
    monkeypatch.setenv("SPAR_CACHE_DIR", str(cache))
    monkeypatch.setattr(est, "calibrate", lambda *a: pytest.fail("a record exists: no calibration"))
    runs = tmp_path / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--dry-run", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert not runs.exists()
    assert '"num_responses": 3' in out and f"-> {tmp_path / 'p.jsonl'} (exists)" in out
    rows = {line.split()[2]: line.split()[3:] for line in out.splitlines() if line.startswith("iter 0 ")}
    assert rows["sample"][:2] == [str(3 * PROMPTS), str(3 * PROMPTS * 30)]  # generations, tokens
    assert rows["judge"][:2] == [str(9 * PROMPTS), str(9 * PROMPTS * 15)]
    assert float(rows["refine"][3]) == pytest.approx(6.0 * PROMPTS)  # seconds scale with prompts
    assert rows["train_actor"][2] == "1"  # steps: ceil(0.2 * 5)
    assert "recorded from an earlier run" in out


def test_calibrated_counts_follow_the_config(tmp_path) -> None:
    config = load_config_file(_config(tmp_path))
    rates = est.Rates(
        basis="calibrated",
        load_s=1.0,
        per_prompt={s: {"s_per_token": 0.001, "fill": 0.5} for s in ("sample", "judge", "refine")},
        train={"train_actor": {"s_per_step": 2.0}, "train_refiner": {"s_per_step": 1.0}},
    )
    rows = {e.stage: e for e in est.estimate(config, 10, rates)}
    assert rows["sample"].generations == 10 * 3 and rows["sample"].tokens == 30 * 40 // 2
    assert rows["judge"].generations == 10 * 3 * 3 and rows["judge"].tokens == 90 * 20 // 2
    assert rows["sample"].seconds == pytest.approx(600 * 0.001 + 1.0)  # tokens x s/token + one load
    assert rows["refine"].generations > 0 and rows["train_actor"].steps >= 1
    assert rows["assemble"].basis == "none"


def _calibrated() -> est.Rates:
    return est.Rates(
        basis="calibrated",
        load_s=1.0,
        per_prompt={s: {"s_per_token": 0.001, "fill": 0.5} for s in ("sample", "judge", "refine")},
        train={"train_actor": {"s_per_step": 2.0}, "train_refiner": {"s_per_step": 1.0}},
    )


def test_a_checker_judged_run_prices_no_judgment(tmp_path) -> None:
    """``judge.backend: verifier`` judges by program: the judge stage generates nothing, and a tree
    costs its refinements only, not ``votes`` judgments per child."""
    llm = {e.stage: e for e in est.estimate(load_config_file(_config(tmp_path)), 10, _calibrated())}
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("max_new_tokens: 20}", "max_new_tokens: 20, backend: verifier}"))
    checked = {e.stage: e for e in est.estimate(load_config_file(path), 10, _calibrated())}
    assert checked["judge"].generations == 0 and checked["judge"].seconds == 0.0  # no engine loaded
    assert checked["refine"].generations * (1 + 3) == pytest.approx(llm["refine"].generations, abs=1)
    assert checked["sample"].generations == llm["sample"].generations


def test_verifier_then_llm_prices_the_prompts_without_constraints(tmp_path, capsys, monkeypatch) -> None:
    """The dry run counts the prompts the checker cannot judge: here 2 of 5 carry constraints."""
    path = _config(tmp_path)
    path.write_text(
        path.read_text().replace("max_new_tokens: 20}", "max_new_tokens: 20, backend: verifier_then_llm}")
    )
    meta = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    lines = [json.dumps({"prompt": f"Say hi {i}.", **(meta if i < 2 else {})}) for i in range(PROMPTS)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    config = load_config_file(path)
    share = est.llm_judged_share(config, [json.loads(line) for line in lines])
    assert share == pytest.approx(3 / 5)
    rows = {e.stage: e for e in est.estimate(config, PROMPTS, _calibrated(), share)}
    assert rows["judge"].generations == round(PROMPTS * 3 * 3 * 3 / 5)
    cache = tmp_path / "cache"
    monkeypatch.setattr(est, "calibrate", lambda *a: _calibrated())
    assert (
        main(["run", str(path), "--runs-dir", str(tmp_path / "r"), "--dry-run", "--cache-dir", str(cache)])
        == 0
    )
    out = capsys.readouterr().out
    judge = next(line.split() for line in out.splitlines() if line.startswith("iter 0 judge"))
    assert judge[3] == str(round(PROMPTS * 3 * 3 * 3 / 5))


def test_a_record_prices_only_runs_that_judge_and_search_alike(tmp_path) -> None:
    """Recorded generations per prompt depend on the judge and the search, not only the models."""
    base = load_config_file(_config(tmp_path))
    assert est.record_key(base) == est.record_key(load_config_file(_config(tmp_path)))
    for change in (
        {"judge": base.judge.model_copy(update={"backend": "verifier"})},
        {"judge": base.judge.model_copy(update={"votes": 5})},
        {"search": base.search.model_copy(update={"branching": 4})},
        {"sample": base.sample.model_copy(update={"num_responses": 8})},
    ):
        other = base.model_copy(update=change)
        assert est.record_key(other) != est.record_key(base), change
        assert est.models_key(other) == est.models_key(base)  # the calibration still applies


def test_a_finished_run_records_its_rates_per_prompt(tmp_path) -> None:
    from services.runs import create_run
    from shared.runtime.artifacts import write_json_atomic

    config = load_config_file(_config(tmp_path))
    paths = create_run(config, tmp_path / "runs", "rec")
    write_json_atomic(
        paths.manifest(0, "sample"),
        {"engine": {"completions": 15, "generated_tokens": 300}, "counts": {}},
    )
    version = paths.root / "models" / "actor" / "v1"
    version.mkdir(parents=True)
    (version / "spar_version.json").write_text(json.dumps({"metrics": {"steps": 2}}))
    write_json_atomic(paths.manifest(0, "train_actor"), {"engine": {}, "counts": {}})
    out = est.record_run(
        paths.root, {(0, "sample"): 6.0, (0, "train_actor"): 8.0, (0, "judge"): 0.0}, tmp_path / "c"
    )
    assert out is not None
    rates = est.load_record(config, tmp_path / "c")
    assert rates is not None and rates.basis == "recorded"
    assert rates.per_prompt["sample"] == {
        "generations": 3.0,
        "tokens_per_generation": 20.0,
        "s_per_token": 0.02,
        "wall_per_prompt": 1.2,
    }
    assert rates.train["train_actor"]["s_per_step"] == 4.0 and "judge" not in rates.per_prompt


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, [*path, name])
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield " ".join(path), "/".join(action.option_strings) or action.dest, action.help


def test_every_flag_of_every_subcommand_has_help() -> None:
    flags = list(_walk(_parser(), ["spar"]))
    assert len(flags) > 40
    missing = [f"{cmd} {flag}" for cmd, flag, text in flags if not text or not text.strip()]
    assert not missing, f"flags without help: {missing}"
    assert {("spar run", "--verbose"), ("spar run", "--dry-run")} <= {(c, f) for c, f, _ in flags}


def test_zero_learning_rate_steps_are_counted_and_warned(tmp_path) -> None:
    assert zero_lr_steps("linear", 0.1, 1) == 1  # the tiny example's single actor step
    assert zero_lr_steps("linear", 0.0, 1) == 0 and zero_lr_steps("constant", 0.1, 5) == 0
    version = tmp_path / "models" / "actor" / "v1"
    version.mkdir(parents=True)
    (version / "spar_version.json").write_text(
        json.dumps(
            {"hyperparameters": {"warmup_ratio": 0.1, "lr_scheduler": "linear"}, "metrics": {"steps": 1}}
        )
    )
    warning = zero_lr_warning(tmp_path, 0, "train_actor")
    assert warning is not None and "1 of 1" in warning and "did not change" in warning
    assert "train_actor.warmup_ratio: 0" in warning
    assert zero_lr_warning(tmp_path, 0, "sample") is None


def test_progress_says_loading_and_where_the_run_is() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    order = [(0, "sample"), (0, "judge"), (1, "sample"), (1, "judge")]
    with RunProgress(console, iter(order), 2, disabled=True) as progress:  # pipeline() yields
        progress.on_loading("actor", "v0 (tiny)")
        progress.on_loaded("actor", "v0 (tiny)", 1.5)
        progress.on_shard(1, "sample", 0, 2)
        progress.on_shard(1, "sample", 2, 2)
    text = console.export_text()
    assert "loading actor model v0 (tiny)" in text and "loaded actor model v0 (tiny) in 1.5 s" in text
    assert "stage 3 of 4 · iteration 2 of 2 · sample: done in" in text
