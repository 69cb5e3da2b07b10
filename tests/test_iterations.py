"""Whole iterations on the tiny model: search, both trainings, versioned checkpoints, resume after a crash."""

import json
from pathlib import Path

import pytest
import yaml
from service_harness import tiny_run_body, variant_prompts

import workers.training.refiner as refiner_training
from services.local import LocalExecutor
from services.runs import create_run, load_config_file, open_run
from services.summary import iteration_summary
from shared.runtime.artifacts import read_json
from shared.runtime.versions import METADATA, version_dir


def write_config(tmp_path: Path, model: Path, **overrides) -> Path:
    # 8 prompts x 4 responses x 5 votes: the random tiny model must yield some dissenting votes
    # (RFT judgment examples) on any machine; 4 x 3 x 3 gave none on some CPUs.
    prompts = variant_prompts(8)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    config = tiny_run_body("it", 5, 2, responses=4, votes=5, train_steps=2, model=str(model))
    config["train_actor"]["sft_weight"] = 0.1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config | overrides))
    return path


def mtimes(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_two_iterations_chain_model_versions(tmp_path: Path, tiny_model_path: Path) -> None:
    paths = create_run(
        load_config_file(write_config(tmp_path, tiny_model_path, iterations=2)), tmp_path / "r", "two"
    )
    LocalExecutor.for_run(paths).run()
    for role in ("actor", "refiner"):
        for version in (1, 2):
            meta = read_json(version_dir(paths, role, version) / METADATA)
            assert meta["version"] == f"v{version}"
            assert meta["parent"].startswith(f"v{version - 1} (")
            assert meta["data"]["sha256"] and meta["hyperparameters"]["max_steps"] == 2
            if "alias_of" not in meta:
                assert (version_dir(paths, role, version) / "config.json").exists()
                assert meta["metrics"]["steps"] == 2 and meta["metrics"]["peak_rss_mb"] > 0
    # iteration 1 sampled with M_1 and judged with R_1
    assert read_json(paths.manifest(1, "sample"))["models"]["actor"].startswith("v1 (")
    assert read_json(paths.manifest(1, "judge"))["models"]["refiner"].startswith("v1 (")
    summary = iteration_summary(paths, 0)
    stages = [t["stage"] for t in summary["training"]]
    assert stages == ["train_actor", "train_refiner"]
    refiner = summary["training"][1]
    assert refiner["records"] > 0 and refiner["target_nll_before"] is not None
    # no half-written checkpoint is ever left visible
    assert not list((paths.root / "models").rglob(".*tmp"))


def test_a_role_the_run_never_trains_plays_v0_in_every_iteration(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """Without train_refiner in `stages`, iteration 1 judges with R_0 (not an error about a missing
    v1), and its eval stage does not score R_0 a second time; a run that trains the role but has
    not published the version still fails with the fix."""
    from shared.runtime.versions import version_for

    stages = ["sample", "judge", "refine", "assemble", "train_actor", "eval"]
    evaluation = {"ifeval_limit": 2, "max_new_tokens": 8}
    path = write_config(tmp_path, tiny_model_path, iterations=2, stages=stages, evaluation=evaluation)
    config = load_config_file(path)
    paths = create_run(config, tmp_path / "r", "no-refiner-training")
    LocalExecutor.for_run(paths).run()
    assert read_json(paths.manifest(1, "sample"))["models"]["actor"].startswith("v1 (")
    assert read_json(paths.manifest(1, "judge"))["models"]["refiner"].startswith("v0 (")
    assert not version_dir(paths, "refiner", 1).exists()
    assert version_for(paths, config, "refiner", 2).version == "v0"
    evaluations = [read_json(paths.manifest(t, "eval"))["counts"] for t in (0, 1)]
    assert [c["ifeval_versions"] for c in evaluations] == [2, 1]
    trained = config.model_copy(update={"stages": [*stages[:5], "train_refiner", "eval"]})
    with pytest.raises(FileNotFoundError, match="refiner version v2 does not exist.*train_refiner"):
        version_for(paths, trained, "refiner", 2)


class Boom(RuntimeError):
    pass


def test_an_interrupted_iteration_resumes_without_recomputing(
    tmp_path: Path, tiny_model_path: Path, monkeypatch
) -> None:
    paths = create_run(load_config_file(write_config(tmp_path, tiny_model_path)), tmp_path / "r", "crash")

    def crash(*args, **kwargs):
        raise Boom("killed during refiner training")

    monkeypatch.setattr(refiner_training, "train_refiner", crash)
    with pytest.raises(Boom):
        LocalExecutor.for_run(paths).run()
    assert (version_dir(paths, "actor", 1) / METADATA).exists()
    assert not version_dir(paths, "refiner", 1).exists()
    assert not list((paths.root / "models" / "refiner").glob(".*"))  # the failed attempt left nothing
    before = mtimes(paths.root / "iter_0") | {
        f"actor/{k}": v for k, v in mtimes(version_dir(paths, "actor", 1)).items()
    }

    monkeypatch.undo()
    LocalExecutor.for_run(open_run(paths.root)).run()
    after = mtimes(paths.root / "iter_0") | {
        f"actor/{k}": v for k, v in mtimes(version_dir(paths, "actor", 1)).items()
    }
    unchanged = {k for k in before if after.get(k) == before[k]}
    assert unchanged == set(before)  # no finished shard or checkpoint was rewritten
    assert (version_dir(paths, "refiner", 1) / METADATA).exists()
    assert read_json(paths.manifest(0, "train_refiner"))["counts"]["trained"] == 1


def test_no_pairs_makes_an_alias_version(tmp_path: Path, tiny_model_path: Path) -> None:
    config = write_config(
        tmp_path,
        tiny_model_path,
        stages=["sample", "judge", "refine", "assemble", "train_actor"],
        data={"max_pairs": 1},
    )
    paths = create_run(load_config_file(config), tmp_path / "r", "alias")
    LocalExecutor.for_run(
        paths,
    ).run_stage(0, "sample")
    for stage in ("judge", "refine", "assemble"):
        LocalExecutor.for_run(paths).run_stage(0, stage)
    paths.data_file(0, "pairs.jsonl").write_text("")  # as if no tree had succeeded
    LocalExecutor.for_run(paths).run_stage(0, "train_actor")
    meta = read_json(version_dir(paths, "actor", 1) / METADATA)
    assert meta["alias_of"] == "v0" and "no training records" in meta["reason"]
    card = (version_dir(paths, "actor", 1) / "README.md").read_text()
    assert "**no training**: the same weights as v0" in card and "load v0 of the same run" in card


def test_the_eval_stage_scores_each_model_version(tmp_path: Path, tiny_model_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPAR_CACHE_DIR", str(tmp_path / "cache"))  # the Punkt data goes here
    judge_file = tmp_path / "llmbar.jsonl"
    judge_file.write_text(
        "".join(
            json.dumps({"input": f"Say {w} in lowercase.", "output_1": w, "output_2": w.upper(), "label": 1})
            + "\n"
            for w in ("hello", "yes", "tea")
        )
    )
    config = write_config(
        tmp_path,
        tiny_model_path,
        stages=["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"],
        evaluation={"ifeval_limit": 3, "max_new_tokens": 16, "judge_data": str(judge_file)},
    )
    paths = create_run(load_config_file(config), tmp_path / "r", "eval")
    LocalExecutor.for_run(paths).run()
    evaluation = iteration_summary(paths, 0)["evaluation"]
    assert [r["version"] for r in evaluation["ifeval"]] == ["v0", "v1"]
    assert [r["version"] for r in evaluation["judge"]] == ["v0", "v1"]
    for r in evaluation["ifeval"]:
        assert r["n_prompts"] == 3 and 0.0 <= r["prompt_strict"] <= r["prompt_loose"] <= 1.0
    for r in evaluation["judge"]:
        assert r["n"] == 3 and 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["invalid_rate"] <= 1.0
        assert 0.0 <= r["pointwise_accuracy"] <= 1.0 and 0.0 <= r["pointwise_f1"] <= 1.0
    for r in evaluation["ifeval"]:
        for metric, (low, high) in r["ci95"].items():
            assert low <= r[metric] <= high, metric
    # every published version has its model card, with the scores once the eval stage has run
    actor_card = (version_dir(paths, "actor", 1) / "README.md").read_text()
    actor_meta = read_json(version_dir(paths, "actor", 1) / METADATA)
    assert actor_card.startswith("---\nlibrary_name: transformers\n")
    assert f"base model (the run's configured actor): `{tiny_model_path}`" in actor_card
    assert f"sha256 `{actor_meta['data']['sha256']}`" in actor_card
    assert f"{actor_meta['data']['records']} training records (preference pairs" in actor_card
    assert "| learning_rate | 0.0001 |" in actor_card and "DPO (direct preference optimisation)" in actor_card
    train_hash = read_json(paths.manifest(0, "train_actor"))["config_hash"]
    assert f"spar stage config hash: `{train_hash}`" in actor_card
    assert f"| ifeval | prompt_strict | {evaluation['ifeval'][1]['prompt_strict']:.4g} |" in actor_card
    assert f'from_pretrained("{version_dir(paths, "actor", 1)}")' in actor_card
    assert "inherits the base model's license" in actor_card
    refiner_card = (version_dir(paths, "refiner", 1) / "README.md").read_text()
    assert f"| judge | accuracy | {evaluation['judge'][1]['accuracy']:.4g} |" in refiner_card
    assert "RFT: supervised fine-tuning" in refiner_card and "logged steps: loss" in refiner_card

    # `spar report` on the same run: every evaluated version, its intervals, the counts and costs
    from services.cli import main

    assert (
        main(["report", str(paths.root), str(paths.root), "--format", "md", "--out", str(tmp_path / "r.md")])
        == 0
    )
    report = (tmp_path / "r.md").read_text()
    v1 = evaluation["ifeval"][1]
    low, high = v1["ci95"]["prompt_strict"]
    assert f"| v1 | {100 * v1['prompt_strict']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in report
    assert "## Comparison" in report and "### IFEval by actor version" in report
    assert report.count("| it | v1 | ") == 6  # last versions, IFEval by version, judge by version; twice
    # the same run compared with itself, paired by prompt: every difference is exactly zero
    zero = " | ".join(["+0.0 [+0.0, +0.0]"] * 4)
    assert f"| it - it | v1 | IFEval | 3 | {zero} | p=1 (+0/-0) | p=1 (+0/-0) |" in report
    assert "| it | IFEval | v1 - v0 | 3 |" in report  # and v1 against v0
    assert f"eval `{read_json(paths.manifest(0, 'eval'))['config_hash']}`" in report
    assert main(["report", str(paths.root)]) == 0
    page = (paths.root / "report.html").read_text()  # rendered tables; charts drawn from the data block
    assert "<table>" in page and '"id": "chart-0-ifeval"' in page


def test_iopo_groups_from_a_tiny_run_train_the_actor(tmp_path: Path, tiny_model_path: Path) -> None:
    """examples/tiny_iopo.yaml as shipped (the test's tiny model is the same build as the built-in one):
    the refiner's rewrites give verified groups, and the actor trains on exactly those."""
    example = Path(__file__).resolve().parents[1] / "examples" / "tiny_iopo.yaml"
    config = yaml.safe_load(example.read_text())
    config["prompts"] = str((example.parent / config["prompts"]).resolve())
    config["actor"]["model"] = config["refiner"]["model"] = str(tiny_model_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    paths = create_run(load_config_file(tmp_path / "config.yaml"), tmp_path / "r", "iopo")
    LocalExecutor.for_run(paths).run()
    counts = read_json(paths.manifest(0, "iopo_groups"))["counts"]
    pairs = [json.loads(line) for line in paths.data_file(0, "pairs.jsonl").read_text().splitlines()]
    assert counts["attempted"] == len(pairs) > 0
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["verified"] > 0 and counts["verified"] + dropped == counts["attempted"]
    groups = [json.loads(line) for line in paths.shard(0, "iopo_groups", 0).read_text().splitlines()]
    assert len(groups) == counts["verified"]
    by_tree = {str(p["tree"]): p for p in pairs}
    for g in groups:  # (x1, y1, x2, y2) = (x, refined, x', negative) of one pair
        pair = by_tree[g["key"]]
        assert (g["x1"], g["y1"], g["y2"]) == (pair["prompt"], pair["chosen"], pair["rejected"])
        assert g["x2"].strip() and g["x2"].strip() != g["x1"].strip()
    meta = read_json(version_dir(paths, "actor", 1) / METADATA)
    assert meta["objective"] == "iopo" and meta["data"]["records"] == counts["verified"]
    train = read_json(paths.manifest(0, "train_actor"))["metrics"]
    assert train["margin_start"] == 0.0 and train["margin_end"] != 0.0  # the groups moved the policy
    summary = iteration_summary(paths, 0)["metrics"]
    assert summary["iopo_verified"] == counts["verified"]


def test_a_run_that_trains_nothing_evaluates_v0_once(tmp_path: Path, tiny_model_path: Path) -> None:
    """No training stage: every iteration samples and judges with v0, and only iteration 0's eval
    scores it (a later one would score the same model again); the run still ends and reports."""
    from services.report import load_run

    evaluation = {"ifeval_limit": 2, "max_new_tokens": 8}
    stages = ["sample", "judge", "eval"]
    path = write_config(tmp_path, tiny_model_path, iterations=2, stages=stages, evaluation=evaluation)
    paths = create_run(load_config_file(path), tmp_path / "r", "untrained")
    LocalExecutor.for_run(paths).run()
    for t in (0, 1):
        assert read_json(paths.manifest(t, "sample"))["models"]["actor"].startswith("v0 (")
    counts = [read_json(paths.manifest(t, "eval"))["counts"] for t in (0, 1)]
    assert [(c["ifeval_versions"], c["evaluations_run"]) for c in counts] == [(1, 1), (0, 0)]
    assert list(load_run(paths.root).ifeval_by_version()) == ["v0"]
