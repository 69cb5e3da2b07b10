"""The experiment's configs, scaled down to the tiny model: every arm runs, forks share, the report compares.

The SmolLM2 experiment (examples/experiment/) takes hours on 2 cores; this runs the very same config
files with only the size changed (tiny model, a few prompts, 2 iterations, short answers, the HF
engine), so a broken arm, fork or report is caught by the suite and not after an afternoon of CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli import main
from services.fork import fork_into
from services.report import load_run
from services.runs import create_run, load_config_file
from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json
from workers.resolved import resolved_settings

EXPERIMENT = Path(__file__).resolve().parent.parent / "examples" / "experiment"
# The module's fixture runs seven tiny runs (about 3 minutes on an idle 2-core machine); on a busy
# one it needs more than the suite's default per-test limit.
pytestmark = pytest.mark.timeout(2400)
ARMS = ("verifier", "main", "samples", "sr_dpo", "iopo")
BASE = ARMS[0]  # issue #21: the verifier arm is run first; the others fork it


def scaled_down(arm: str, tmp: Path, model: Path, iterations: int = 2) -> Path:
    """The arm's config with only its size changed; written next to copies of its data files."""
    source = EXPERIMENT / f"smollm2_{arm}.yaml"
    config = yaml.safe_load(source.read_text())

    def data(relative: str, lines: int, name: str) -> str:
        rows = (source.parent / relative).read_text().splitlines()[:lines]
        (tmp / name).write_text("\n".join(rows) + "\n")
        return name

    config |= {
        "prompts": data(config["prompts"], 6, "prompts.jsonl"),
        "shard_size": 3,
        "iterations": min(config["iterations"], iterations),
    }
    if config.get("init"):  # the sampled-pairs arm trains no refiner, so it initialises none
        config["init"] |= {"refiner_data": data(config["init"]["refiner_data"], 8, "init.jsonl")}
        config["init"]["refiner"] |= {"max_steps": 2, "max_length": 256}
    for role in ("actor", "refiner"):
        config[role] = {"model": str(model), "engine": "hf", "hf": {"batch_size": 16}}
    config["sample"] |= {"max_new_tokens": 24}
    config["judge"] |= {"max_new_tokens": 32}
    # the tiny random model's refinements share few words with what they refine: the guard would
    # refuse them all and leave no pairs to train on, so it is kept configured but lets all pass
    config["search"] |= {
        "max_new_tokens": 40,
        "guard": {"reject_format_echo": False, "min_words": 0, "min_overlap": 0.0},
    }
    for stage in ("train_actor", "train_refiner"):
        config[stage] |= {"max_steps": 2, "max_length": 256}
    evaluation = config["evaluation"]
    evaluation |= {"ifeval_limit": 3, "max_new_tokens": 16}
    if evaluation.get("judge_data"):
        evaluation["judge_data"] = data(evaluation["judge_data"], 3, "judge.jsonl")
    if evaluation.get("validation_prompts"):
        evaluation["validation_prompts"] = data(evaluation["validation_prompts"], 3, "validation.jsonl")
    path = tmp / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model_path: Path) -> dict[str, RunPaths]:
    """The verifier arm from scratch, then each other arm forked from it, as docs/results describes."""
    tmp = tmp_path_factory.mktemp("experiment")
    runs = tmp / "runs"
    # the verifier arm for 2 iterations (the loop carries over); each other arm for 1 (what it
    # changes shows from the first iteration on), which keeps the suite's share of CI to minutes
    configs = {arm: scaled_down(arm, tmp, tiny_model_path, 2 if arm == BASE else 1) for arm in ARMS}
    assert main(["run", str(configs[BASE]), "--runs-dir", str(runs), "--run-id", BASE, "--no-progress"]) == 0
    for arm in ARMS[1:]:
        argv = [
            "run",
            str(configs[arm]),
            "--fork",
            str(runs / BASE),
            "--runs-dir",
            str(runs),
            "--run-id",
            arm,
        ]
        assert main([*argv, "--no-progress"]) == 0
    # recipe tuning: the verifier arm's setting (reuses its training) and another, on the validation split
    tune = scaled_down("tune", tmp, tiny_model_path, 1)
    for name, overrides in (("tune-same", []), ("tune-lr", ["--set", "train_actor.learning_rate=3.0e-4"])):
        argv = ["run", str(tune), "--fork", str(runs / BASE), "--runs-dir", str(runs), "--run-id", name]
        assert main([*argv, "--no-progress", *overrides]) == 0
    return {arm: RunPaths(runs / arm) for arm in (*ARMS, "tune-same", "tune-lr")}


def test_every_arm_runs_and_evaluates_each_version(experiment) -> None:
    for arm in ARMS:
        report = load_run(experiment[arm].root)
        versions = ["v0", "v1", "v2"] if arm == BASE else ["v0", "v1"]
        assert list(report.ifeval_by_version()) == versions, arm
        assert list(report.judge_by_version()) == versions, arm
        for row in report.ifeval_by_version().values():
            assert row["n_prompts"] == 3 and set(row["ci95"]) >= {"prompt_strict", "instruction_loose"}


def test_each_arm_changes_what_it_says(experiment) -> None:
    config = {arm: read_json(experiment[arm].config)["config"] for arm in ARMS}
    assert config["verifier"]["judge"]["backend"] == "verifier"
    assert config["main"]["judge"]["backend"] == "llm"
    assert config["samples"]["data"]["pairs_from"] == "samples"
    assert config["sr_dpo"]["train_actor"]["objective"] == "sr_dpo"
    # beside the name and the one change, each arm is the verifier arm's config
    base_config = config[BASE]
    for arm, change in (("main", "judge"), ("samples", "data"), ("sr_dpo", "train_actor")):
        ignored = ("name", "iterations", change)
        other = {k: v for k, v in config[arm].items() if k not in ignored}
        assert other == {k: v for k, v in base_config.items() if k not in ignored}, arm
    meta = read_json(experiment["sr_dpo"].root / "models" / "actor" / "v1" / "spar_version.json")
    assert meta["objective"] == "sr_dpo"
    meta = read_json(experiment["iopo"].root / "models" / "actor" / "v1" / "spar_version.json")
    assert (
        meta.get("objective", "iopo") == "iopo" and (experiment["iopo"].manifest(0, "iopo_groups")).exists()
    )


def test_forked_arms_reuse_exactly_the_shared_stages(experiment) -> None:
    reused = {arm: load_run(experiment[arm].root).reused for arm in ARMS[1:]}
    shared = {(0, "init"), (0, "sample"), (0, "judge"), (0, "refine")}
    assert reused["samples"] == shared  # the pairs differ from assembly on
    # the same pairs, another loss: the refiner's training reads none of it
    assert reused["sr_dpo"] == shared | {(0, "assemble"), (0, "train_refiner")}
    assert reused["main"] == {(0, "init"), (0, "sample")}  # another judge from stage 2 on
    # the groups are made after assembly, and only the actor trains on them
    assert reused["iopo"] == shared | {(0, "assemble"), (0, "train_refiner")}
    # their eval stages score the new versions only: the versions they share with the verifier arm
    # were scored there with the same settings (the judge's backend does not enter those scores)
    taken = {
        arm: [key for t in read_json(experiment[arm].root / FORK_RECORD)["evaluations"] for key in t["kept"]]
        for arm in ARMS[1:]
    }
    assert taken["sr_dpo"] == taken["iopo"] == ["ifeval:v0", "judge:v0", "judge:v1"]
    assert taken["samples"] == taken["main"] == ["ifeval:v0", "judge:v0"]
    # what each eval stage ran itself, which the ETA scales a later eval by
    ran = {arm: read_json(experiment[arm].manifest(0, "eval"))["counts"]["evaluations_run"] for arm in ARMS}
    assert ran == {"verifier": 4, "main": 2, "samples": 2, "sr_dpo": 1, "iopo": 1}
    assert read_json(experiment[BASE].manifest(1, "eval"))["counts"]["evaluations_run"] == 2
    # the reused sample stage is the verifier arm's, byte for byte
    base_samples = experiment[BASE].shard(0, "sample", 0).read_bytes()
    assert all(experiment[a].shard(0, "sample", 0).read_bytes() == base_samples for a in ARMS[1:])


def test_the_report_compares_the_arms(experiment, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    dirs = [str(experiment[arm].root) for arm in ARMS]
    assert main(["report", *dirs, "--format", "md", "--out", str(out)]) == 0
    text = out.read_text()
    for title in (
        "IFEval by actor version",
        "Difference from exp-verifier-guard",
        "Judge accuracy by refiner",
        "Wall time",
    ):
        assert f"### {title}" in text, title
    # each arm's one change, read from the recorded configs
    lines = text.split("### Settings that differ between the runs", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2 : 2 + len(ARMS)])
    table = {row[0]: dict(zip(header, row, strict=True)) for row in cells}
    assert table["exp-sr-dpo"]["train_actor.objective"] == "sr_dpo"
    assert table["exp-verifier-guard"]["train_actor.objective"] == "dpo"
    assert table["exp-main"]["judge.backend"] == "llm"
    assert table["exp-verifier-guard"]["judge.backend"] == "verifier"
    assert table["exp-samples"]["data.pairs_from"] == "samples"
    runs = {arm: load_run(experiment[arm].root) for arm in ARMS}
    for r in runs.values():
        for version, row in r.ifeval_by_version().items():
            assert f"| {r.name()} | {version} | {100 * row['prompt_strict']:.1f} [" in text
    # the paired deltas are the differences of the per-version numbers above
    base, other = runs[BASE].ifeval_by_version(), runs["samples"].ifeval_by_version()
    delta = 100 * (other["v1"]["prompt_loose"] - base["v1"]["prompt_loose"])
    prefix = "| exp-samples - exp-verifier-guard | v1 | IFEval |"
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    assert line.split(" | ")[6].startswith(f"{delta:+.1f} [")
    # a forked arm's wall time counts only what it computed
    own, reused = runs["sr_dpo"].wall_seconds()
    assert reused > 0 and f"| {own / 60:.1f} | {reused / 60:.1f} | {BASE} |" in text
    assert f"Forked from `{BASE}`, reusing" in text and "*reused*" in text
    assert "took the source's scores of the versions both runs share: ifeval:v0@0, judge:v0@0" in text
    assert main(["report", *dirs, "--out", str(tmp_path / "report.html")]) == 0
    assert "exp-main" in (tmp_path / "report.html").read_text()


def test_recipe_tuning_scores_the_validation_split_and_never_ifeval(experiment, tmp_path: Path) -> None:
    same, other = load_run(experiment["tune-same"].root), load_run(experiment["tune-lr"].root)
    # the verifier arm's own setting: its training is reused, so the tuned point is its v1
    assert (0, "train_actor") in same.reused and (0, "train_actor") not in other.reused
    for r in (same, other):
        evaluation = r.iterations[0]["evaluation"]
        assert evaluation["ifeval"] == [] and evaluation["judge"] == []
        assert [row["version"] for row in evaluation["validation"]] == ["v0", "v1"]
        assert all(row["n_prompts"] == 3 for row in evaluation["validation"])
    assert read_json(experiment["tune-lr"].config)["config"]["train_actor"]["learning_rate"] == 3e-4
    # the tuning table says which value each point tried
    out = tmp_path / "tuning.md"
    dirs = [str(experiment[name].root) for name in ("tune-same", "tune-lr")]
    assert main(["report", *dirs, "--format", "md", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| run | train_actor.learning_rate |" in text
    assert "| tune-same | 5e-05 |" in text and "| tune-lr | 0.0003 |" in text
    # the comparison shows the validation split, the only one a tuning run scores
    assert "| tune-same | v1 | validation | " in text and "| tune-lr | v1 | validation | " in text
    # v0 is the same model on the same prompts in both: the same score
    assert (
        same.iterations[0]["evaluation"]["validation"][0]
        == other.iterations[0]["evaluation"]["validation"][0]
    )


def test_a_validation_file_without_metadata_fails_when_the_run_is_created(
    tmp_path: Path, tiny_model_path
) -> None:
    from shared.errors import PromptFileError

    config = scaled_down("tune", tmp_path, tiny_model_path)
    (tmp_path / "validation.jsonl").write_text('{"prompt": "Write a poem."}\n')
    with pytest.raises(PromptFileError, match="validation.jsonl.*line 1.*instruction_id_list"):
        create_run(load_config_file(config), tmp_path / "runs")
    with pytest.raises(Exception, match="train_actor.learning_rate"):
        load_config_file(config, ["train_actor.learning_rate=-1"])


def test_the_sampled_pairs_arm_runs_whole_without_a_refiner(
    experiment, tmp_path: Path, tiny_model_path
) -> None:
    """smollm2_verifier_samples.yaml: the verifier arm's loop with sampled pairs, standalone, over its
    iterations; no refinement, no refiner training, IFEval after every iteration, and the same sample
    stage (hash and bytes) as the verifier arm at iteration 0."""
    config = scaled_down("verifier_samples", tmp_path, tiny_model_path)
    runs = tmp_path / "runs"
    argv = ["run", str(config), "--runs-dir", str(runs), "--run-id", "vs", "--no-progress"]
    assert main(argv) == 0
    paths = RunPaths(runs / "vs")
    report = load_run(paths.root)
    assert list(report.ifeval_by_version()) == ["v0", "v1", "v2"]
    assert report.judge_by_version() == {}
    for t in (0, 1):
        assert not paths.manifest(t, "refine").exists() and not paths.manifest(t, "train_refiner").exists()
        pairs = (paths.root / f"iter_{t}" / "assemble" / "pairs.jsonl").read_text().splitlines()
        assert all('#samples"' in line for line in pairs)
    assert not (paths.root / "models" / "refiner" / "v1").exists()
    assert [read_json(paths.manifest(t, "eval"))["counts"]["evaluations_run"] for t in (0, 1)] == [2, 1]
    mine = read_json(paths.config)["config"]
    base = read_json(experiment[BASE].config)["config"]
    for section in ("actor", "sample", "judge", "seed", "shard_size"):
        assert mine[section] == base[section], section
    # the same DPO recipe but for the learning rate: this arm ran at the starting 5e-6 before the
    # tuning on its iteration 0 picked 5e-5 for the arms not yet started (docs/results/tuning.md)
    assert {**mine["train_actor"], "learning_rate": 5e-5} == base["train_actor"]
    assert mine["train_actor"]["learning_rate"] == 5e-6
    assert mine["data"]["pairs_from"] == "samples" and base["data"]["pairs_from"] == "refinement"
    assert paths.shard(0, "sample", 0).read_bytes() == experiment[BASE].shard(0, "sample", 0).read_bytes()
    # queue.txt's verifier arm forks this run: its stage 0 trains only the refiner, so actor v0 is
    # the configured model in both and iteration 0's sampling and v0's IFEval are taken from here
    guard = create_run(load_config_file(scaled_down("verifier", tmp_path, tiny_model_path)), runs, "guard")
    assert fork_into(paths, guard, resolved_settings) == [(0, "sample")]
    assert read_json(guard.root / FORK_RECORD)["evaluations"] == [{"iteration": 0, "kept": ["ifeval:v0"]}]
    # recipe tuning on these pairs (smollm2_tune_samples.yaml): a fork at the arm's own setting
    # reuses its training; another learning rate trains again; both score only the validation split
    tune = scaled_down("tune_samples", tmp_path, tiny_model_path, 1)
    for name, overrides in (("ts-same", []), ("ts-lr", ["--set", "train_actor.learning_rate=3.0e-4"])):
        argv = ["run", str(tune), "--fork", str(paths.root), "--runs-dir", str(runs), "--run-id", name]
        assert main([*argv, "--no-progress", *overrides]) == 0
    same, other = load_run(runs / "ts-same"), load_run(runs / "ts-lr")
    for stage in ("sample", "judge", "assemble"):
        assert (0, stage) in same.reused and (0, stage) in other.reused, stage
    assert (0, "train_actor") in same.reused and (0, "train_actor") not in other.reused
    for r in (same, other):
        evaluation = r.iterations[0]["evaluation"]
        assert evaluation["ifeval"] == [] and evaluation["judge"] == []
        assert [row["version"] for row in evaluation["validation"]] == ["v0", "v1"]
    # each point's v1 records the setting it was trained with (the tiny model may find no pairs)
    rates = {
        run: read_json(runs / run / "models" / "actor" / "v1" / "spar_version.json")["hyperparameters"][
            "learning_rate"
        ]
        for run in ("vs", "ts-same", "ts-lr")
    }
    assert rates == {"vs": 5e-6, "ts-same": 5e-6, "ts-lr": 3e-4}
