"""The numbers a person looks at after a run: one table per iteration, built from stage manifests."""

from __future__ import annotations

from shared.stages import STAGES, TRAINING_STAGES
from workers.artifacts import RunPaths, read_json


def _ratio(num: float, den: float) -> float | None:
    return None if not den else num / den


def iteration_summary(paths: RunPaths, iteration: int) -> dict:
    """Headline metrics and per-stage costs of one iteration, from whatever stages are done."""
    stages: dict[str, dict] = {}
    for stage in STAGES:
        manifest = paths.manifest(iteration, stage)
        if manifest.exists():
            stages[stage] = read_json(manifest)
    c = {name: m["counts"] for name, m in stages.items()}
    sample, judge, refine, assemble = (c.get(s, {}) for s in ("sample", "judge", "refine", "assemble"))
    metrics = {
        "prompts": sample.get("prompts", judge.get("prompts")),
        "responses": sample.get("responses", judge.get("responses")),
        "pass_rate": _ratio(judge.get("pass", 0), judge.get("pass", 0) + judge.get("fail", 0)),
        "undecided": judge.get("undecided"),
        "negatives": judge.get("negatives"),
        "prompts_all_pass": judge.get("prompts_all_pass"),
        "trees": refine.get("trees"),
        "success_rate": _ratio(refine.get("successes", 0), refine.get("trees", 0)),
        "mean_expansions_per_tree": _ratio(refine.get("expansions", 0), refine.get("trees", 0)),
        "pairs": assemble.get("pairs"),
        "rft_examples": assemble.get("rft"),
    }
    if "iopo_groups" in c:
        metrics |= {f"iopo_{k}": v for k, v in sorted(c["iopo_groups"].items())}
    rows = [
        {
            "stage": name,
            "shards": m["shards"],
            "engine_calls": m["engine"].get("calls", 0),
            "tokens_generated": m["engine"].get("generated_tokens", 0),
            # requests beyond the model's context (engine `overlong` policy): skipped / truncated
            "overlong_skipped": m["engine"].get("overlong_skipped", 0),
            "overlong_truncated": m["engine"].get("overlong_truncated", 0),
            "seconds": m["shard_seconds"],
        }
        for name, m in stages.items()
    ]
    training = []
    for stage in TRAINING_STAGES:
        if stage not in stages:
            continue
        m = stages[stage]
        t = m.get("metrics", {})
        training.append(
            {
                "stage": stage,
                "new_version": m["models"].get(stage.removeprefix("train_") + "_new", ""),
                "objective": t.get("objective", "rft" if stage == "train_refiner" else None),
                "records": m["counts"].get("records"),
                "steps": t.get("steps"),
                "first_loss": t.get("first_loss", (t.get("loss_curve") or [None])[0]),
                "last_loss": t.get("last_loss", (t.get("loss_curve") or [None])[-1]),
                "margin_start": t.get("margin_start"),
                "margin_end": t.get("margin_end"),
                "target_nll_before": t.get("target_nll_before"),
                "target_nll_after": t.get("target_nll_after"),
                "peak_rss_mb": t.get("peak_rss_mb"),
                "loss_curve": t.get("loss_curve") or [],
            }
        )
    evaluation = stages["eval"].get("metrics", {}) if "eval" in stages else {}
    return {
        "iteration": iteration,
        "metrics": metrics,
        "stages": rows,
        "training": training,
        "evaluation": {"ifeval": evaluation.get("ifeval", []), "judge": evaluation.get("judge", [])},
    }


def render(summary: dict):  # -> rich.console.Group
    from rich.console import Group
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
