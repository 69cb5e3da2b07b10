"""The numbers a person looks at after a run: one table per iteration, built from stage manifests."""

from __future__ import annotations

from typing import TypeVar

from shared.engine import EngineStats
from shared.records import (
    AssembleCounts,
    Counts,
    JudgeCounts,
    RefineCounts,
    SampleCounts,
    StageManifest,
    TrainCounts,
)
from shared.runtime.artifacts import RunPaths, read_json
from shared.stages import STAGES, TRAINING_STAGES
from shared.stages import stage as stage_def

C = TypeVar("C", bound=Counts)


def _ratio(num: float, den: float) -> float | None:
    return None if not den else num / den


def _manifests(paths: RunPaths, iteration: int) -> dict[str, StageManifest]:
    """The manifests of the iteration's finished stages, in pipeline order."""
    out = {}
    for stage in STAGES:
        manifest = paths.manifest(iteration, stage)
        if manifest.exists():
            out[stage] = StageManifest.from_record(read_json(manifest))
    return out


def _counts(stages: dict[str, StageManifest], stage: str, model: type[C]) -> C | None:
    """A finished stage's summed counts, typed (None when the stage has not run)."""
    return model.from_record(stages[stage].counts) if stage in stages else None


def iteration_summary(paths: RunPaths, iteration: int) -> dict:
    """Headline metrics and per-stage costs of one iteration, from whatever stages are done."""
    stages = _manifests(paths, iteration)
    sample = _counts(stages, "sample", SampleCounts)
    judge = _counts(stages, "judge", JudgeCounts)
    refine = _counts(stages, "refine", RefineCounts)
    assemble = _counts(stages, "assemble", AssembleCounts)
    metrics = {
        "prompts": sample.prompts if sample else judge.prompts if judge else None,
        "responses": sample.responses if sample else judge.responses if judge else None,
        "pass_rate": _ratio(judge.pass_, judge.pass_ + judge.fail) if judge else None,
        "undecided": judge.undecided if judge else None,
        "negatives": judge.negatives if judge else None,
        "prompts_all_pass": judge.prompts_all_pass if judge else None,
        "trees": refine.trees if refine else None,
        "success_rate": _ratio(refine.successes, refine.trees) if refine else None,
        "mean_expansions_per_tree": _ratio(refine.expansions, refine.trees) if refine else None,
        "pairs": assemble.pairs if assemble else None,
        "rft_examples": assemble.rft if assemble else None,
    }
    if "iopo_groups" in stages:
        metrics |= {f"iopo_{k}": v for k, v in sorted(stages["iopo_groups"].counts.items())}
    rows = []
    for name, m in stages.items():
        engine = EngineStats(**m.engine)
        rows.append(
            {
                "stage": name,
                "shards": m.shards,
                "engine_calls": engine.calls,
                "tokens_generated": engine.generated_tokens,
                # requests beyond the model's context (engine `overlong` policy): skipped / truncated
                "overlong_skipped": engine.overlong_skipped,
                "overlong_truncated": engine.overlong_truncated,
                # completions cut at max_new_tokens: a stage's limits should keep their share small
                "completions": engine.completions,
                "length_capped": engine.length_capped,
                "seconds": m.shard_seconds,
                # what the machine resolved beyond the config (engine release, dtype, precision)
                "resolved": m.resolved,
            }
        )
    training = []
    for stage in TRAINING_STAGES:
        if stage not in stages:
            continue
        m = stages[stage]
        counts = TrainCounts.from_record(m.counts)
        t = m.metrics
        training.append(
            {
                "stage": stage,
                "new_version": m.models.get(f"{stage_def(stage).trains}_new", ""),
                "objective": t.get("objective", "rft" if stage == "train_refiner" else None),
                "records": counts.records,
                "steps": t.get("steps"),
                "first_loss": t.get("first_loss", (t.get("loss_curve") or [None])[0]),
                "last_loss": t.get("last_loss", (t.get("loss_curve") or [None])[-1]),
                "margin_start": t.get("margin_start"),
                "margin_end": t.get("margin_end"),
                "target_nll_before": t.get("target_nll_before"),
                "target_nll_after": t.get("target_nll_after"),
                "peak_rss_mb": t.get("peak_rss_mb"),
                "loss_curve": t.get("loss_curve") or [],
                "hub": t.get("hub") or [],
            }
        )
    evaluation = stages["eval"].metrics if "eval" in stages else {}
    return {
        "iteration": iteration,
        "metrics": metrics,
        "stages": rows,
        "training": training,
        "evaluation": {
            "ifeval": evaluation.get("ifeval", []),
            "judge": evaluation.get("judge", []),
            "validation": evaluation.get("validation", []),
        },
    }


def render(summary: dict):  # -> rich.console.Group
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    metrics = Table(title=f"iteration {summary['iteration']}: what it produced", show_header=True)
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in summary["metrics"].items():
        if value is None:
            shown = "-"
        elif isinstance(value, float) and ("rate" in key or "mean" in key or not value.is_integer()):
            shown = f"{value:.3f}"
        else:
            shown = str(int(value))
        metrics.add_row(key.replace("_", " "), shown)

    costs = Table(title=f"iteration {summary['iteration']}: cost per stage", show_header=True)
    for col in ("stage", "shards", "engine calls", "tokens generated", "over-long skip/trunc", "wall s"):
        costs.add_column(col, justify="left" if col == "stage" else "right")
    for row in summary["stages"]:
        costs.add_row(
            row["stage"],
            str(row["shards"]),
            str(row["engine_calls"]),
            str(row["tokens_generated"]),
            f"{row.get('overlong_skipped', 0)}/{row.get('overlong_truncated', 0)}",
            f"{row['seconds']:.1f}",
        )
    parts = [metrics, costs]
    if summary.get("training"):
        train = Table(title=f"iteration {summary['iteration']}: training", show_header=True)
        for col in ("stage", "new", "objective", "records", "steps", "loss first->last", "change", "RSS MB"):
            train.add_column(col)
        for r in summary["training"]:
            if r["target_nll_before"] is not None:
                progress = f"target NLL {_pair(r['target_nll_before'], r['target_nll_after'])}"
            else:
                progress = f"margin {_pair(r['margin_start'], r['margin_end'])}"
            train.add_row(
                r["stage"],
                r["new_version"].split(" ")[0],
                str(r["objective"] or "-"),
                _fmt(r["records"]),
                _fmt(r["steps"]),
                _pair(r["first_loss"], r["last_loss"]),
                progress,
                _fmt(r["peak_rss_mb"]),
            )
        parts.append(train)
        pushes = [p for r in summary["training"] for p in r.get("hub") or []]
        if pushes:
            hub = Table(title=f"iteration {summary['iteration']}: hub pushes", show_header=True)
            for col in ("version", "repo", "revision", "status"):
                hub.add_column(col)
            for p in pushes:
                status = "pushed" if p.get("status") == "pushed" else f"FAILED: {escape(str(p.get('error')))}"
                version = f"{p.get('role')} {p.get('version')}"
                hub.add_row(version, p.get("repo_id") or "-", p.get("revision") or "-", status)
            parts.append(hub)
    evaluation = summary.get("evaluation") or {}
    if evaluation.get("ifeval") or evaluation.get("judge"):
        table = Table(title=f"iteration {summary['iteration']}: evaluation", show_header=True)
        for col in ("model", "version", "metric", "value"):
            table.add_column(col)
        for r in evaluation.get("ifeval", []):
            for key in (
                "prompt_strict",
                "instruction_strict",
                "prompt_loose",
                "instruction_loose",
                "average",
            ):
                table.add_row("actor IFEval", r["version"], key.replace("_", " "), f"{r[key]:.3f}")
        for r in evaluation.get("judge", []):
            for key in ("accuracy", "invalid_rate"):
                table.add_row("refiner judge", r["version"], key.replace("_", " "), f"{r[key]:.3f}")
        parts.append(table)
    return Group(*parts)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def _pair(a, b) -> str:
    return "-" if a is None and b is None else f"{_fmt(a)} -> {_fmt(b)}"
