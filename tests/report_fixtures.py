"""Fabricated run directories for the report's tests: manifests and eval rows in the shapes the
stages write, with per-prompt outcomes chosen by the test, so every number the report prints can be
worked out by hand (no model runs, a report test takes a second)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from services.runs import create_run
from shared.config import RunConfig
from shared.evaluation.ifeval import METRICS, confidence_intervals
from shared.records import JudgedResponseRow, JudgeRow, NodeRow, TreeRow, VoteCounts
from shared.runtime.artifacts import RunPaths, write_json_atomic, write_jsonl_atomic

Outcome = tuple[list[bool], list[bool]]
"""One prompt's (strict, loose) results per instruction."""


def outcomes(passes: list[bool], instructions: int = 1) -> list[Outcome]:
    """Prompts whose every instruction passes (strict and loose alike) or fails, per ``passes``."""
    return [([p] * instructions, [p] * instructions) for p in passes]


@dataclass
class FakeRun:
    """What to write: IFEval outcomes and judge labels per version, stage engine counts."""

    run_id: str
    name: str
    ifeval: dict[str, list[Outcome]]
    judge: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    validation: dict[str, list[Outcome]] = field(default_factory=dict)
    capped_share: dict[str, float] = field(default_factory=dict)
    """IFEval ``length_capped_share`` per version (absent: 0)."""
    stage_engine: dict[str, dict[str, int]] = field(default_factory=dict)
    """Engine counts per stage name, written to every iteration's manifest of that stage."""
    keep_records: bool = True
    """False: IFEval rows carry only responses, as runs before per-prompt records did."""
    responses: dict[str, list[str]] = field(default_factory=dict)
    items: list[dict] | None = None
    """IFEval items (key, prompt) the responses answer; default: keys 0..n-1, made-up prompts."""
    judge_file: Path | None = None
    sample_texts: dict[int, list[str]] = field(default_factory=dict)
    """Responses the sample stage of an iteration wrote to its shard (absent: no shard)."""
    judgments: dict[int, list[list[str]]] = field(default_factory=dict)
    """Each judged response's sampled judgments per iteration, written to its judge shard."""
    refine_texts: dict[int, list[str | None]] = field(default_factory=dict)
    """Raw completions of one search tree's child nodes per iteration (None: the node kept no raw
    text, only its parsed response ``parsed <i>``)."""
    loss_curve: list[float] = field(default_factory=lambda: [0.69, 0.5])


def _records(rows: list[Outcome], keys: list[int]) -> list[dict]:
    return [
        {"key": k, "instruction_id_list": ["x:y"] * len(s), "strict": s, "loose": loose}
        for k, (s, loose) in zip(keys, rows, strict=True)
    ]


def _scores(records: list[dict]) -> dict:
    """The manifest's metrics for these records, computed as ``score_responses`` does."""
    n = len(records)
    instructions = sum(len(r["strict"]) for r in records)
    out: dict = {"n_prompts": n}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = sum(all(r[mode]) for r in records) / n
        out[f"instruction_{mode}"] = sum(sum(r[mode]) for r in records) / instructions
    out["average"] = sum(out[m] for m in METRICS) / len(METRICS)
    out["ci95"] = confidence_intervals(records, samples=200)
    return out


def _judge_metrics(labels: list[tuple[str, str]]) -> dict:
    from shared.evaluation.judge_eval import pointwise_scores

    n = len(labels)
    pp = sum(p == "pass" for p, _ in labels)
    of = sum(o == "fail" for _, o in labels)
    op = sum(o == "pass" for _, o in labels)
    correct = sum(p == "pass" and o == "fail" for p, o in labels)
    return {
        "n": n,
        "accuracy": correct / n,
        **pointwise_scores(pp, of, op, n),
        "invalid_rate": 0.0,
        "undecided_rate": sum((p == "undecided") + (o == "undecided") for p, o in labels) / (2 * n),
    }


def _manifest(run: FakeRun, t: int, stage: str, **extra: object) -> dict:
    return {
        "run_id": run.run_id,
        "iteration": t,
        "stage": stage,
        "config_hash": f"hash-{stage}",
        "models": {},
        "metrics": {},
        "shards": 1,
        "counts": {},
        "engine": run.stage_engine.get(stage, {}),
        "shard_seconds": 60.0,
        "written_at": 0.0,
        "resolved": {"actor": {"engine": "vllm", "version": "0.32.0", "device": "cpu", "dtype": "bfloat16"}},
    } | extra


def write_run(root: Path, run: FakeRun, prompts_file: Path) -> Path:
    """Create the run directory (a real config via ``create_run``) and its fabricated stages."""
    versions = list(run.ifeval)
    iterations = max(1, len(versions) - 1)
    evaluation = {"judge_data": str(run.judge_file)} if run.judge_file else {}
    config = RunConfig.model_validate(
        {
            "name": run.name,
            "prompts": str(prompts_file),
            "iterations": iterations,
            "actor": {"model": "tiny"},
            "refiner": {"model": "tiny"},
            "evaluation": evaluation,
        }
    )
    paths = create_run(config, root, run.run_id)
    for t in range(iterations):
        evaluated = versions[: t + 2] if t == 0 else [versions[t + 1]]
        stages = {
            "sample": _manifest(run, t, "sample", counts={"prompts": 4, "responses": 16}),
            "judge": _manifest(
                run,
                t,
                "judge",
                counts={"prompts": 4, "responses": 16, "pass": 6 + t, "fail": 10 - t, "negatives": 10 - t},
            ),
            "refine": _manifest(run, t, "refine", counts={"trees": 4, "successes": 1 + t, "expansions": 12}),
            "assemble": _manifest(run, t, "assemble", counts={"pairs": 1 + t, "rft": 5}),
            "train_actor": _manifest(
                run,
                t,
                "train_actor",
                counts={"records": 3},
                models={"actor_new": f"v{t + 1}"},
                metrics={"objective": "dpo", "steps": len(run.loss_curve), "loss_curve": run.loss_curve},
                resolved={"train_actor": {"precision": "float32", "device": "cpu"}},
            ),
        }
        ifeval_rows, shard_rows = [], []
        for v in evaluated:
            items = run.items or [{"key": k, "prompt": f"prompt {k}"} for k in range(len(run.ifeval[v]))]
            keys = [item["key"] for item in items]
            records = _records(run.ifeval[v], keys)
            row = {"version": v, **_scores(records), "length_capped_share": run.capped_share.get(v, 0.0)}
            ifeval_rows.append(row)
            texts = run.responses.get(v, [f"answer {k}" for k in keys])
            responses = [
                {"key": item["key"], "prompt": item["prompt"], "response": text}
                for item, text in zip(items, texts, strict=True)
            ]
            shard = {"kind": "ifeval", "version": f"{v} (/models/actor/{v})", "responses": responses}
            shard_rows.append(shard | ({"records": records} if run.keep_records else {}))
        validation_rows = []
        for v in evaluated:
            if v in run.validation:
                records = _records(run.validation[v], list(range(len(run.validation[v]))))
                validation_rows.append({"version": v, **_scores(records), "length_capped_share": 0.0})
                shard_rows.append({"kind": "validation", "version": v, "responses": [], "records": records})
        judge_rows = []
        for v in evaluated:
            if v in run.judge:
                labels = run.judge[v]
                judge_rows.append({"version": v, **_judge_metrics(labels)})
                records = [
                    {"index": i, "label": 1, "preferred": p, "other": o} for i, (p, o) in enumerate(labels)
                ]
                shard_rows.append(
                    {"kind": "judge", "version": f"{v} (/models/refiner/{v})", "records": records}
                )
        stages["eval"] = _manifest(
            run,
            t,
            "eval",
            metrics={"ifeval": ifeval_rows, "judge": judge_rows, "validation": validation_rows},
        )
        for stage, manifest in stages.items():
            write_json_atomic(paths.manifest(t, stage), manifest)
        write_jsonl_atomic(paths.shard(t, "eval", 0), shard_rows)
        if t in run.sample_texts:
            rows = [{"id": "p0", "prompt": "Task 0.", "responses": run.sample_texts[t]}]
            write_jsonl_atomic(paths.shard(t, "sample", 0), rows)
        if t in run.judgments:
            write_jsonl_atomic(paths.shard(t, "judge", 0), [_judged(run.judgments[t]).as_record()])
        if t in run.refine_texts:
            write_jsonl_atomic(paths.shard(t, "refine", 0), [_tree(run.refine_texts[t]).as_record()])
    return paths.root


def _judged(judgments: list[list[str]]) -> JudgeRow:
    """A prompt whose responses each carry one list of ``judgments`` (all failed, by vote)."""
    responses = [
        JudgedResponseRow(
            text=f"response {i}",
            label=0,
            value=0.0,
            votes=VoteCounts.model_validate({"pass": 0, "fail": len(votes), "invalid": 0}),
            labels=[0] * len(votes),
            judgments=votes,
            kept_index=0,
            rounds=1,
        )
        for i, votes in enumerate(judgments)
    ]
    return JudgeRow(id="p0", prompt="Task 0.", responses=responses, negatives=list(range(len(judgments))))


def _tree(raws: list[str | None]) -> TreeRow:
    """An exhausted search tree whose root is a looping negative and whose children carry ``raws``."""
    node = {"judgment": "fails", "value": 0.0, "vote": {}}
    root = NodeRow(id=0, parent=None, depth=0, response="the negative " * 80, raw=None, **node)
    children = [
        NodeRow(id=i, parent=0, depth=1, response=f"parsed {i}", raw=raw, **node)
        for i, raw in enumerate(raws, 1)
    ]
    return TreeRow(
        prompt_id="p0",
        key="p0#0",
        prompt="Task 0.",
        status="exhausted",
        success_id=None,
        expansions=1,
        parse_failures=0,
        dropped_unparsed=0,
        dropped_ties=0,
        max_depth_reached=1,
        nodes=[root, *children],
    )


def prompts_file(tmp: Path) -> Path:
    path = tmp / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Task {i}."}) + "\n" for i in range(4)))
    return path


def run_paths(root: Path) -> RunPaths:
    return RunPaths(root)
