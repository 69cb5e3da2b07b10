"""The `eval` stage: how good the iteration's models are, per model version.

IFEval (strict/loose, prompt/instruction level) of the actor on a configurable subset, and pairwise
judge accuracy of the refiner on an LLMBar-style file when one is configured. The numbers land in
the stage's record, hence in the manifest, the CLI summary and the API. At most one engine is
resident while it runs (see ``run_eval``).
"""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

from shared.config import RunConfig
from shared.evaluation.ifeval import validation_items
from shared.evaluation.kept import kept_key
from shared.records import ShardOutput
from shared.runtime.artifacts import RunPaths, write_jsonl_atomic
from shared.runtime.partial import PartialShard
from shared.runtime.versions import ModelVersion, read_metadata, version_dir

from ..hub import push_version
from .common import StageContext, version_label

LEGACY_KIND = {"ifeval": "IFEval", "validation": "validation", "judge": "judge accuracy"}
"""How the kept items' keys (and progress labels) named each kind before they were keyed by version
number: an attempt interrupted under the old keys is still resumed."""
IFEVAL_KEYS = (
    "prompt_strict",
    "instruction_strict",
    "prompt_loose",
    "instruction_loose",
    "average",
    "n_prompts",
    "ci95",
    "length_capped_share",
)
JUDGE_KEYS = ("accuracy", "pointwise_accuracy", "pointwise_f1", "invalid_rate", "undecided_rate", "n")


def _versions(ctx: StageContext, role: str) -> list[ModelVersion]:
    """Baseline v0 at iteration 0, then the newest version this iteration made (if any); none after
    iteration 0 for a role the run never trains (it stays v0, scored at iteration 0)."""
    iteration = ctx.iteration
    if iteration > 0 and not ctx.config.trains(role):
        return []
    trained = read_metadata(version_dir(ctx.paths, role, iteration + 1)) is not None
    latest = ctx.version(role, iteration + 1 if trained else iteration)
    chosen = [ctx.version(role, 0)] if iteration == 0 and latest.version != "v0" else []
    return chosen + [latest]


def run_eval(ctx: StageContext) -> ShardOutput:
    from shared.evaluation.ifeval import evaluate_ifeval
    from shared.evaluation.judge_eval import evaluate_judge, load_pairwise

    config, engines = ctx.config, ctx.engines
    e = config.evaluation
    ifeval, judge, validation, rows = [], [], [], []
    held_out = validation_items(Path(e.validation_prompts)) if e.validation_prompts else None
    actor_versions = _versions(ctx, "actor")
    items = load_pairwise(Path(e.judge_data), e.judge_limit) if e.judge_data is not None else None
    refiner_versions = _versions(ctx, "refiner") if items is not None else []
    # Version by version, the actor then the refiner: the provider keeps ONE engine resident and
    # closes it before loading the next, and when actor and refiner are the same model version
    # (the demo) one engine serves both evaluations of a version instead of being loaded twice.
    # Each version's evaluation is kept as it ends (IFEval of 541 prompts takes a quarter of an hour
    # on a CPU): a retry after a crash evaluates only the versions still missing.
    partial = PartialShard(ctx.output_shard, config.stage_hash("eval"))
    kept = partial.load()
    run_now: list[str] = []  # the evaluations this attempt ran (not kept): what its seconds paid for

    def evaluated(kind: str, version: ModelVersion, evaluate) -> tuple[dict, dict]:
        """(metrics, row) of one evaluation: kept by an earlier attempt or taken from the run this one
        was forked from (``shared.runtime.fork_evaluations``), or run now and kept."""
        key = kept_key(kind, version.version)
        legacy = f"{LEGACY_KIND[kind]}:{version_label(version)}"  # the key before versions sufficed
        if key not in kept and legacy in kept:
            kept[key] = kept[legacy]
        if key not in kept:
            ctx.report(f"{LEGACY_KIND[kind]} {version.version}", 0, 1)
            metrics, row = evaluate()
            kept[key] = {"metrics": {"version": version.version, **metrics}, "row": row}
            partial.add(key, kept[key])
            run_now.append(key)
        # a kept row names the model by this run's path, whichever run or attempt scored it
        return kept[key]["metrics"], {**kept[key]["row"], "version": version_label(version)}

    def ifeval_of(kind: str, actor: ModelVersion, **kwargs) -> tuple[dict, dict]:
        result = evaluate_ifeval(
            engines.engine_for("actor", actor), max_new_tokens=e.max_new_tokens, **kwargs
        )
        row = {
            "kind": kind,
            "version": version_label(actor),
            "responses": result.get("responses", []),
            # per prompt, which instructions passed: what paired comparisons of versions read
            "records": result.get("records", []),
        }
        return {k: result[k] for k in IFEVAL_KEYS}, row

    def judge_of(refiner: ModelVersion) -> tuple[dict, dict]:
        j = config.judge
        result = evaluate_judge(
            engines.engine_for("refiner", refiner),
            items,
            votes=j.votes,
            temperature=j.temperature,
            top_p=j.top_p,
            max_new_tokens=j.max_new_tokens,
            seed=config.seed,
        )
        row = {"kind": "judge", "version": version_label(refiner), "records": result.get("records", [])}
        return {k: result[k] for k in JUDGE_KEYS}, row

    for actor, refiner in zip_longest(actor_versions, refiner_versions):
        if actor is not None and e.ifeval:
            metrics, row = evaluated(
                "ifeval", actor, lambda a=actor: ifeval_of("ifeval", a, limit=e.ifeval_limit)
            )
            ifeval.append(metrics)
            rows.append(row)
        if actor is not None and held_out is not None:
            metrics, row = evaluated(
                "validation", actor, lambda a=actor: ifeval_of("validation", a, items=held_out)
            )
            validation.append(metrics)
            rows.append(row)
        if refiner is not None and items is not None:
            metrics, row = evaluated("judge", refiner, lambda r=refiner: judge_of(r))
            judge.append(metrics)
            rows.append(row)
    write_jsonl_atomic(ctx.output_shard, rows)
    partial.remove()
    rewritten = _add_scores_to_cards(ctx.paths, config, ifeval, validation, judge)
    # the scored card pushed again; a failure is recorded, never raised (even with hub.required): a
    # retry would evaluate again for a card's sake, and `spar hub push` pushes it without that
    pushed = [push_version(ctx.paths, config, role, k, raise_failure=False) for role, k in rewritten]
    pushes = [p.as_record() for p in pushed if p is not None]
    return ShardOutput(
        counts={
            "ifeval_versions": len(ifeval),
            "judge_versions": len(judge),
            # services/eta.py scales a later iteration's eval by it: iteration 0 scores v0 as well
            "evaluations_run": len(run_now),
        },
        metrics={"ifeval": ifeval, "judge": judge, "validation": validation}
        | ({"hub": pushes} if pushes else {}),
    )


def _add_scores_to_cards(
    paths: RunPaths, config: RunConfig, ifeval: list[dict], validation: list[dict], judge: list[dict]
) -> list[tuple[str, int]]:
    """Rewrite the model card of every trained version just scored, now with its scores (the card is
    written when the version is published, before any evaluation of it could run); returns the
    (role, version) of each card rewritten, which a configured hub then gets again."""
    from ..model_card import card_for_version

    scored: dict[tuple[str, str], list[dict]] = {}
    for kind, role, rows in (
        ("ifeval", "actor", ifeval),
        ("validation", "actor", validation),
        ("judge", "refiner", judge),
    ):
        for row in rows:
            scored.setdefault((role, row["version"]), []).append({"kind": kind, **row})
    rewritten = []
    for (role, version), rows in scored.items():
        if version[:1] == "v" and version[1:].isdigit():
            if card_for_version(paths, config, role, int(version[1:]), evaluation=rows) is not None:
                rewritten.append((role, int(version[1:])))
    return rewritten
