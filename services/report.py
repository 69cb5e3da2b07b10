"""``spar report RUN_DIR [RUN_DIR ...]``: a self-contained report of finished (or running) runs.

Everything comes from the run directories (manifests, ``spar_version.json``, the config): a report
can be rebuilt at any time and no number in it is typed by hand. One HTML file (inline CSS and SVG
charts, no script, nothing loaded from elsewhere) or Markdown:

* per run: the config and its stage hashes; per iteration the counts (negatives, tree success rate,
  expansions, pairs, RFT examples), the cost per stage (engine calls, tokens, wall time) and the
  training curves; per model version IFEval's four metrics with 95% intervals and the refiner's
  judge accuracy (pairwise and pointwise), from the ``eval`` stage;
* with several runs, the tables laid out like the paper's (rows = arms, columns = metrics): the
  last evaluated versions; IFEval of every actor version of every arm; each arm's difference from
  the first run named (the reference arm) at the same version; judge accuracy per refiner version;
  and the wall time each arm spent. A run forked from another (``spar run --fork``) counts only the
  stages it computed itself; the stages it reused are marked.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.stages import STAGE_TABLE
from workers.artifacts import RunPaths, read_json
from workers.stages.common import load_config

from .fork import FORK_RECORD
from .summary import iteration_summary

IFEVAL_METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")
JUDGE_METRICS = ("accuracy", "pointwise_accuracy", "pointwise_f1")
COUNT_METRICS = ("negatives", "success_rate", "mean_expansions_per_tree", "pairs", "rft_examples")


@dataclass
class RunReport:
    """What the report shows of one run, read from its directory."""

    run_id: str
    root: Path
    config: dict[str, Any]
    hashes: dict[str, str]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    forked_from: str | None = None
    reused: set[tuple[int, str]] = field(default_factory=set)
    """Stages taken from ``forked_from`` (their wall time was spent by that run)."""

    def name(self) -> str:
        """How tables name the run: its config's ``name`` (the arm), else its run id."""
        return str(self.config.get("name") or self.run_id)

    def wall_seconds(self) -> tuple[float, float]:
        """(seconds this run computed, seconds of the stages it reused from its source)."""
        own = reused = 0.0
        for it in self.iterations:
            for s in it["stages"]:
                if (it["iteration"], s["stage"]) in self.reused:
                    reused += s["seconds"]
                else:
                    own += s["seconds"]
        return own, reused

    def ifeval_by_version(self) -> dict[str, dict[str, Any]]:
        """Each actor version's IFEval row; a version evaluated twice keeps its latest row."""
        return {r["version"]: r for it in self.iterations for r in it["evaluation"]["ifeval"]}

    def validation_by_version(self) -> dict[str, dict[str, Any]]:
        """Each actor version's score on the validation split (the recipe-tuning metric)."""
        return {r["version"]: r for it in self.iterations for r in it["evaluation"].get("validation", [])}

    def judge_by_version(self) -> dict[str, dict[str, Any]]:
        return {r["version"]: r for it in self.iterations for r in it["evaluation"]["judge"]}


def load_run(run_dir: Path) -> RunReport:
    paths = RunPaths(Path(run_dir))
    if not paths.config.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    config = load_config(paths)
    hashes = {}  # as recorded when each stage ran (the code's defaults may have changed since)
    for s in STAGE_TABLE:
        manifest = next((m for m in sorted(paths.root.glob(f"iter_*/{s.name}/manifest.json"))), None)
        if manifest is not None:
            hashes[s.name] = read_json(manifest)["config_hash"]
    report = RunReport(paths.run_id, paths.root, read_json(paths.config)["config"], hashes)
    if (paths.root / FORK_RECORD).exists():
        fork = read_json(paths.root / FORK_RECORD)
        report.forked_from = fork["source_run_id"]
        report.reused = {(r["iteration"], r["stage"]) for r in fork["reused"]}
    for t in range(config.iterations):
        if (paths.root / f"iter_{t}").exists():
            report.iterations.append(iteration_summary(paths, t))
    return report


# --- formatting ----------------------------------------------------------------------------------


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _ci(row: dict[str, Any], metric: str) -> str:
    ci = (row.get("ci95") or {}).get(metric)
    return f"{_pct(row[metric])} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(row.get(metric))


def comparison_rows(reports: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """The paper-style table: one row per run, IFEval of its last actor version and judge scores."""
    header = ["run", "actor", *IFEVAL_METRICS, "average", "refiner", *JUDGE_METRICS]
    rows = []
    for r in reports:
        ifeval, judge = r.ifeval_by_version(), r.judge_by_version()
        actor = list(ifeval)[-1] if ifeval else None
        refiner = list(judge)[-1] if judge else None
        row = [r.name(), actor or "-"]
        row += [_ci(ifeval[actor], m) for m in IFEVAL_METRICS] if actor else ["-"] * 4
        row += [_pct(ifeval[actor]["average"]) if actor else "-", refiner or "-"]
        row += [_pct(judge[refiner].get(m)) for m in JUDGE_METRICS] if refiner else ["-"] * 3
        rows.append(row)
    return header, rows


def version_rows(reports: list[RunReport], split: str = "ifeval") -> tuple[list[str], list[list[str]]]:
    """IFEval (or the validation split) of every evaluated actor version of every run: rows (arm, version)."""
    header = ["arm", "version", *IFEVAL_METRICS, "average", "prompts"]
    rows = []
    for r in reports:
        scores = r.ifeval_by_version() if split == "ifeval" else r.validation_by_version()
        for v, row in scores.items():
            rows.append(
                [
                    r.name(),
                    v,
                    *(_ci(row, m) for m in IFEVAL_METRICS),
                    _pct(row["average"]),
                    str(row.get("n_prompts", "-")),
                ]
            )
    return header, rows


def delta_rows(reports: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """Each other arm minus the first run at the same actor version, in IFEval points.

    Both arms are scored on the same prompts, so this is the ablation's effect; whether it is more
    than noise is read against the intervals in the per-version table.
    """
    header = ["arm", "version", *IFEVAL_METRICS, "average"]
    base = reports[0].ifeval_by_version()
    rows = []
    for r in reports[1:]:
        for v, row in r.ifeval_by_version().items():
            if v not in base or v == "v0":
                continue
            diffs = [100 * (row[m] - base[v][m]) for m in (*IFEVAL_METRICS, "average")]
            rows.append([f"{r.name()} - {reports[0].name()}", v, *(f"{d:+.1f}" for d in diffs)])
    return header, rows


def judge_rows(reports: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """The refiner's judge accuracy per version per arm (in %)."""
    header = ["arm", "version", "pairwise", "pointwise", "pointwise F1", "invalid", "n"]
    rows = []
    for r in reports:
        for v, row in r.judge_by_version().items():
            rows.append(
                [
                    r.name(),
                    v,
                    _pct(row.get("accuracy")),
                    _pct(row.get("pointwise_accuracy")),
                    _pct(row.get("pointwise_f1")),
                    _pct(row.get("invalid_rate")),
                    str(row.get("n", "-")),
                ]
            )
    return header, rows


def wall_rows(reports: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    """Wall time per arm: what it computed, and what it reused from the run it was forked from."""
    header = ["arm", "run", "iterations", "computed (min)", "reused (min)", "forked from"]
    rows = []
    for r in reports:
        own, reused = r.wall_seconds()
        rows.append(
            [
                r.name(),
                r.run_id,
                str(len(r.iterations)),
                f"{own / 60:.1f}",
                f"{reused / 60:.1f}",
                r.forked_from or "-",
            ]
        )
    return header, rows


def _table(title: str, table: tuple[list[str], list[list[str]]]) -> list[str]:
    header, rows = table
    if not rows:
        return []
    out = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _line_chart(title: str, series: dict[str, list[float]], width: int = 360, height: int = 160) -> str:
    """A small SVG line chart (one polyline per series), drawn here: the report loads nothing."""
    points = [v for values in series.values() for v in values if v is not None]
    if not points:
        return ""
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    longest = max(len(v) for v in series.values())
    colors = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed"]
    lines = []
    for k, (name, values) in enumerate(series.items()):
        xy = [
            (20 + (width - 40) * i / max(longest - 1, 1), height - 25 - (height - 50) * (v - lo) / span)
            for i, v in enumerate(values)
            if v is not None
        ]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        color = colors[k % len(colors)]
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        lines.append(
            f'<text x="{width - 10}" y="{15 + 14 * k}" font-size="11" text-anchor="end" '
            f'fill="{color}">{html.escape(name)}</text>'
        )
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">'
        f'<rect width="100%" height="100%" fill="#fff" stroke="#d0d5dd"/>'
        f'<text x="10" y="15" font-size="12">{html.escape(title)}</text>'
        f'<text x="10" y="{height - 8}" font-size="10">{lo:.3g} .. {hi:.3g}</text>'
        + "".join(lines)
        + "</svg></figure>"
    )


def render_markdown(reports: list[RunReport]) -> str:
    out = ["# spar report", ""]
    if len(reports) > 1:
        out += ["## Comparison of arms (IFEval in % with 95% bootstrap CI over prompts)", ""]
        out += _table("Last evaluated versions", comparison_rows(reports))
        out += _table("IFEval by actor version", version_rows(reports))
        out += _table(
            "Validation split (recipe tuning) by actor version", version_rows(reports, "validation")
        )
        out += _table(
            f"Difference from {reports[0].name()} at the same version (points)", delta_rows(reports)
        )
        out += _table("Judge accuracy by refiner version (%)", judge_rows(reports))
        out += _table("Wall time", wall_rows(reports))
    for r in reports:
        out += [f"## Run `{r.run_id}`", "", f"Directory: `{r.root}`", ""]
        if r.forked_from is not None:
            reused = ", ".join(f"{s}@{t}" for t, s in sorted(r.reused)) or "nothing"
            out += [f"Forked from `{r.forked_from}`, reusing {reused} (marked *reused* below).", ""]
        out += ["Stage config hashes: " + ", ".join(f"{k} `{v}`" for k, v in r.hashes.items()), ""]
        out += _markdown_versions(r)
        for it in r.iterations:
            out += [f"### Iteration {it['iteration']}", ""]
            out += ["| metric | value |", "|---|---|"]
            out += [f"| {k.replace('_', ' ')} | {_num(v)} |" for k, v in it["metrics"].items()]
            out += ["", "| stage | shards | engine calls | tokens | wall s |", "|---|---|---|---|---|"]
            out += [
                f"| {s['stage']}{' *reused*' if (it['iteration'], s['stage']) in r.reused else ''} "
                f"| {s['shards']} | {s['engine_calls']} | {s['tokens_generated']} | {s['seconds']:.1f} |"
                for s in it["stages"]
            ]
            for t in it["training"]:
                curve = ", ".join(f"{v:.3g}" for v in t["loss_curve"])
                out += ["", f"Training {t['stage']} -> {t['new_version']}: loss per step [{curve}]"]
            out.append("")
        out += ["<details><summary>config</summary>", "", "```json"]
        out += [json.dumps(r.config, indent=2, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(out)


def _markdown_scores(title: str, scores: dict[str, dict[str, Any]]) -> list[str]:
    """One table of the IFEval checker's four metrics (with intervals) per actor version."""
    if not scores:
        return []
    out = [title, "", "| version | " + " | ".join(IFEVAL_METRICS) + " | average | prompts |"]
    out += ["|" + "---|" * (len(IFEVAL_METRICS) + 3)]
    for v, row in scores.items():
        cells = " | ".join(_ci(row, m) for m in IFEVAL_METRICS)
        out.append(f"| {v} | {cells} | {_pct(row['average'])} | {row.get('n_prompts', '-')} |")
    return out + [""]


def _markdown_versions(r: RunReport) -> list[str]:
    judge = r.judge_by_version()
    out = _markdown_scores(
        "Validation split (% with 95% bootstrap CI; the recipe-tuning metric, not IFEval):",
        r.validation_by_version(),
    )
    out += _markdown_scores("IFEval (% with 95% bootstrap CI over prompts):", r.ifeval_by_version())
    if judge:
        out += ["Judge accuracy (%):", "", "| version | pairwise | pointwise | pointwise F1 | invalid | n |"]
        out += ["|---|---|---|---|---|---|"]
        for v, row in judge.items():
            out.append(
                f"| {v} | {_pct(row.get('accuracy'))} | {_pct(row.get('pointwise_accuracy'))} | "
                f"{_pct(row.get('pointwise_f1'))} | {_pct(row.get('invalid_rate'))} | {row.get('n', '-')} |"
            )
        out.append("")
    return out


def render_html(reports: list[RunReport]) -> str:
    """The Markdown's content as one HTML page, with SVG charts of counts and training curves."""
    body = [f"<pre>{html.escape(render_markdown(reports))}</pre>"]
    for r in reports:
        charts = []
        for metric in COUNT_METRICS:
            charts.append(
                _line_chart(
                    f"{r.run_id}: {metric}", {metric: [it["metrics"].get(metric) for it in r.iterations]}
                )
            )
        for it in r.iterations:
            for t in it["training"]:
                charts.append(
                    _line_chart(
                        f"{r.run_id}: iteration {it['iteration']} {t['stage']} loss",
                        {"loss": t["loss_curve"]},
                    )
                )
        ifeval = r.ifeval_by_version()
        if ifeval:
            charts.append(
                _line_chart(
                    f"{r.run_id}: IFEval by version",
                    {m: [row[m] for row in ifeval.values()] for m in IFEVAL_METRICS},
                )
            )
        drawn = "".join(c for c in charts if c)
        body.append(f"<h2>Charts: {html.escape(r.run_id)}</h2><div class='charts'>{drawn}</div>")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>spar report</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330}"
        "pre{white-space:pre-wrap;background:#f7f8fa;padding:12px;border:1px solid #d0d5dd}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}</style></head><body>"
        + "".join(body)
        + "</body></html>"
    )


def write_report(run_dirs: list[Path], out: Path, fmt: str = "html") -> Path:
    reports = [load_run(d) for d in run_dirs]
    text = render_html(reports) if fmt == "html" else render_markdown(reports)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
