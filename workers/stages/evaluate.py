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
from shared.records import ShardOutput
from shared.runtime.artifacts import RunPaths, write_jsonl_atomic
from shared.runtime.versions import ModelVersion, read_metadata, version_dir

from ..hub import push_version
from .common import StageContext, version_label

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
    """Baseline v0 at iteration 0, then the newest version this iteration made (if any)."""
    iteration = ctx.iteration
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
    for actor, refiner in zip_longest(actor_versions, refiner_versions):
        if actor is not None and e.ifeval:
            ctx.report(f"IFEval {actor.version}", 0, 1)
            result = evaluate_ifeval(engines.engine_for("actor", actor), e.ifeval_limit, e.max_new_tokens)
            ifeval.append({"version": actor.version, **{k: result[k] for k in IFEVAL_KEYS}})
            rows.append(
                {
                    "kind": "ifeval",
                    "version": version_label(actor),
                    "responses": result.get("responses", []),
                    # per prompt, which instructions passed: what paired comparisons of versions read
                    "records": result.get("records", []),
                }
            )
        if actor is not None and held_out is not None:
            ctx.report(f"validation {actor.version}", 0, 1)
            result = evaluate_ifeval(
                engines.engine_for("actor", actor), max_new_tokens=e.max_new_tokens, items=held_out
            )
            validation.append({"version": actor.version, **{k: result[k] for k in IFEVAL_KEYS}})
            rows.append(
                {
                    "kind": "validation",
                    "version": version_label(actor),
                    "responses": result.get("responses", []),
                    "records": result.get("records", []),
                }
            )
        if refiner is not None and items is not None:
            ctx.report(f"judge accuracy {refiner.version}", 0, 1)
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
            judge.append({"version": refiner.version, **{k: result[k] for k in JUDGE_KEYS}})
            rows.append(
                {"kind": "judge", "version": version_label(refiner), "records": result.get("records", [])}
            )
    write_jsonl_atomic(ctx.output_shard, rows)
    rewritten = _add_scores_to_cards(ctx.paths, config, ifeval, validation, judge)
    # the scored card pushed again; a failure is recorded, never raised (even with hub.required): a
    # retry would evaluate again for a card's sake, and `spar hub push` pushes it without that
    pushed = [push_version(ctx.paths, config, role, k, raise_failure=False) for role, k in rewritten]
    pushes = [p.as_record() for p in pushed if p is not None]
    return ShardOutput(
        counts={"ifeval_versions": len(ifeval), "judge_versions": len(judge)},
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
