"""The `eval` stage: how good the iteration's models are, per model version.

IFEval (strict/loose, prompt/instruction level) of the actor on a configurable subset, and pairwise
judge accuracy of the refiner on an LLMBar-style file when one is configured. The numbers land in
the stage's record, hence in the manifest, the CLI summary and the API.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import RunPaths, write_jsonl_atomic
from ..versions import ModelVersion, read_metadata, version_dir, version_for
from .common import EngineProvider, Progress, StageResult, StageSpec, load_config, version_label

IFEVAL_KEYS = (
    "prompt_strict",
    "instruction_strict",
    "prompt_loose",
    "instruction_loose",
    "average",
    "n_prompts",
)
JUDGE_KEYS = ("accuracy", "invalid_rate", "undecided_rate", "n")


def _versions(paths: RunPaths, config, role: str, iteration: int) -> list[ModelVersion]:
    """Baseline v0 at iteration 0, then the newest version this iteration made (if any)."""
    trained = read_metadata(version_dir(paths, role, iteration + 1)) is not None
    latest = version_for(paths, config, role, iteration + 1 if trained else iteration)
    chosen = [version_for(paths, config, role, 0)] if iteration == 0 and latest.version != "v0" else []
    return chosen + [latest]


def run_eval(
    paths: RunPaths, spec: StageSpec, engines: EngineProvider, progress: Progress | None
) -> StageResult:
    from ..evaluation.ifeval import evaluate_ifeval
    from ..evaluation.judge_eval import evaluate_judge, load_pairwise

    config = load_config(paths)
    e = config.evaluation
    started = time.perf_counter()
    ifeval, judge, rows = [], [], []
    for version in _versions(paths, config, "actor", spec.iteration):
        if progress is not None:
            progress(f"IFEval {version.version}", 0, 1)
        result = evaluate_ifeval(engines.engine_for("actor", version), e.ifeval_limit, e.max_new_tokens)
        ifeval.append({"version": version.version, **{k: result[k] for k in IFEVAL_KEYS}})
        rows.append(
            {"kind": "ifeval", "version": version_label(version), "responses": result.get("responses", [])}
        )
    if e.judge_data is not None:
        items = load_pairwise(Path(e.judge_data), e.judge_limit)
        for version in _versions(paths, config, "refiner", spec.iteration):
            if progress is not None:
                progress(f"judge accuracy {version.version}", 0, 1)
            j = config.judge
            result = evaluate_judge(
                engines.engine_for("refiner", version),
                items,
                votes=j.votes,
                temperature=j.temperature,
                top_p=j.top_p,
                max_new_tokens=j.max_new_tokens,
                seed=config.seed,
            )
            judge.append({"version": version.version, **{k: result[k] for k in JUDGE_KEYS}})
    write_jsonl_atomic(paths.shard(spec.iteration, "eval", spec.shard), rows)
    return StageResult(
        counts={"ifeval_versions": len(ifeval), "judge_versions": len(judge)},
        seconds=time.perf_counter() - started,
        metrics={"ifeval": ifeval, "judge": judge},
    )
