"""``spar report RUN_DIR [RUN_DIR ...]``: a self-contained report of finished (or running) runs.

Everything comes from the run directories (manifests, the eval stage's per-prompt rows, fork
records, the config): a report can be rebuilt at any time and no number in it is typed by hand.
This module builds the content as blocks (:mod:`services.report_doc`); Markdown is rendered here,
the HTML page in :mod:`services.report_html`. In reading order:

* **summary**: the paper-style table (last evaluated version of each run: IFEval's four metrics
  with 95% intervals, the refiner's judge scores) and the **paired differences**: each actor
  version against v0 and against the version before, on IFEval and on the validation split, in
  points with paired bootstrap 95% intervals and exact McNemar tests (:mod:`services.report_stats`);
  with several runs, each other arm minus the first at the same version, paired the same way;
  then IFEval per version, judge accuracy with intervals beside the trivial judges, wall time;
* **per run**: the config's stage hashes and what each stage resolved to on its machine (engine
  release, dtype, training precision), the per-version tables, the share of completions cut at
  ``max_new_tokens`` per stage and of IFEval answers per version (5% or more is flagged), charts,
  per iteration the counts, costs and training curves, and the config (collapsed).

A run forked from another (``spar run --fork``) counts only the stages it computed itself; the
stages it reused are marked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from shared.degeneration import MAX_PERIOD as LOOP_PERIOD
from shared.degeneration import TAIL_TOKENS as LOOP_TAIL
from shared.degeneration import count_loops
from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json, read_jsonl
from shared.runtime.shards import load_config
from shared.stages import STAGE_TABLE

from .eval_records import EvalRows, read_eval_rows, rescore_missing
from .report_doc import FLAG, Block, Charts, Details, Heading, Section, Table, Text, to_markdown
from .report_settings import settings_rows, with_defaults
from .report_stats import (
    IFEVAL_METRICS,
    JUDGE_SCORES,
    TRIVIAL_JUDGES,
    Estimate,
    PairedComparison,
    compare_paired,
    estimates_from_manifest,
    judge_estimates,
    judge_labels,
    trivial_judges,
    version_comparisons,
)
from .summary import iteration_summary

JUDGE_METRICS = ("accuracy", "pointwise_accuracy", "pointwise_f1")
COUNT_METRICS = ("negatives", "success_rate", "mean_expansions_per_tree", "pairs", "rft_examples")
SPLITS = {"ifeval": "IFEval", "validation": "validation"}
CAPPED_FLAG = 0.05
"""A share of completions cut at max_new_tokens from which the report flags it (the issue's bound)."""


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
    taken_evaluations: list[str] = field(default_factory=list)
    """Evaluations (``ifeval:v0@0``) a recomputed eval stage took from ``forked_from``: the same
    model version scored with the same settings there."""

    label: str | None = None
    """Set by :func:`name_runs` when another run in the same report would have the same name."""
    _stage_records: dict[tuple[int, str], list[dict[str, Any]] | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def name(self) -> str:
        """How tables name the run: its config's ``name`` (the arm), else its run id; the run id
        when another run of the report has the same config name (:func:`name_runs`): tuning points
        forked from one config, or an arm run again (``exp-verifier`` and ``exp-verifier-guard``)."""
        if self.label is not None:
            return self.label
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

    def scores_by_version(self, split: str) -> dict[str, dict[str, Any]]:
        return self.ifeval_by_version() if split == "ifeval" else self.validation_by_version()

    def judge_by_version(self) -> dict[str, dict[str, Any]]:
        return {r["version"]: r for it in self.iterations for r in it["evaluation"]["judge"]}

    def stage_records(self, iteration: int, stage: str) -> list[dict[str, Any]] | None:
        """The records of a stage's output shards in ``iteration``, read once per report (the cut
        table and the guard audit both read the refine trees); None when its shards are gone."""
        key = (iteration, stage)
        if key not in self._stage_records:
            shards = sorted(RunPaths(self.root).stage_dir(iteration, stage).glob("shard_*.jsonl"))
            self._stage_records[key] = (
                [row for shard in shards for row in read_jsonl(shard)] if shards else None
            )
        return self._stage_records[key]

    @cached_property
    def eval_rows(self) -> EvalRows:
        """The eval stage's per-prompt and per-pair rows of the iterations whose eval is done;
        IFEval rows of older runs (no per-prompt records) re-scored from their responses."""
        done = [it["iteration"] for it in self.iterations if any(s["stage"] == "eval" for s in it["stages"])]
        rows = read_eval_rows(self.root, max(done) + 1 if done else 0)
        rescore_missing(rows, {"ifeval": _ifeval_items, "validation": self._validation_items})
        return rows

    def _validation_items(self) -> list[dict[str, Any]]:
        from shared.evaluation.ifeval import validation_items

        path = (self.config.get("evaluation") or {}).get("validation_prompts")
        if not path:
            raise FileNotFoundError("the config names no validation_prompts")
        return validation_items(Path(path))

    def records(self, split: str) -> dict[str, list[dict[str, Any]] | None]:
        """Per-prompt records of each evaluated version of ``split``, in the manifest's order."""
        rows = self.eval_rows.of(split)
        return {v: (rows[v].records if v in rows else None) for v in self.scores_by_version(split)}

    @cached_property
    def comparisons(self) -> dict[str, list[PairedComparison]]:
        """Paired comparisons of the versions, per split (computed once per report)."""
        return {split: version_comparisons(self.records(split)) for split in SPLITS}


def _ifeval_items() -> list[dict[str, Any]]:
    from shared.evaluation.ifeval import load_ifeval_prompts

    return load_ifeval_prompts()


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
        report.taken_evaluations = [
            f"{key}@{taken['iteration']}" for taken in fork.get("evaluations", []) for key in taken["kept"]
        ]
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


def _estimate(e: Estimate | None) -> str:
    if e is None:
        return "-"
    if e.low is None or e.high is None:
        return _pct(e.value)
    return f"{_pct(e.value)} [{_pct(e.low)}, {_pct(e.high)}]"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _difference(comparison: PairedComparison, metric: str) -> str:
    """``+1.2 [-0.8, +3.1]`` in points; ``*`` marks an interval that excludes 0."""
    d = comparison.differences[metric]
    mark = "*" if d.excludes_zero else ""
    return f"{_points(d.difference)} [{_points(d.low)}, {_points(d.high)}]{mark}"


def _mcnemar(comparison: PairedComparison, metric: str) -> str:
    t = comparison.tests[metric]
    return f"p={t.p_value:.3g} (+{t.gained}/-{t.lost})"


def _share(part: int | None, whole: int | None) -> str:
    """``12/300 (4.0%)``, flagged from :data:`CAPPED_FLAG`."""
    if part is None or not whole:
        return "-"
    share = part / whole
    return f"{part}/{whole} ({100 * share:.1f}%)" + (f" {FLAG}" if share >= CAPPED_FLAG else "")


# --- the tables ----------------------------------------------------------------------------------


def comparison_table(reports: list[RunReport]) -> Table:
    """The paper-style table: one row per run, IFEval of its last actor version and judge scores; a
    tuning run, which never scores IFEval, by its validation split (named in the split column)."""
    header = [
        *("run", "actor", "split", *IFEVAL_METRICS, "average"),
        *("refiner", "pairwise", "pointwise", "pointwise F1"),
    ]
    rows = []
    for r in reports:
        split = "ifeval" if r.ifeval_by_version() or not r.validation_by_version() else "validation"
        scores, judge = r.scores_by_version(split), r.judge_by_version()
        actor = list(scores)[-1] if scores else None
        refiner = list(judge)[-1] if judge else None
        row = [r.name(), actor or "-", SPLITS[split] if actor else "-"]
        row += [_ci(scores[actor], m) for m in IFEVAL_METRICS] if actor else ["-"] * 4
        row += [_pct(scores[actor]["average"]) if actor else "-", refiner or "-"]
        score = _judge_scores(r, refiner) if refiner else {}
        row += [_estimate(score.get(s)) for s in JUDGE_SCORES]
        rows.append(row)
    title = (
        "Last evaluated versions (IFEval %, or the validation split's for a tuning run; 95% bootstrap "
        "CI over prompts; judge %, 95% CI over pairs)"
    )
    return Table(title, header, rows, id="comparison")


PAIRED_HEADER = [*IFEVAL_METRICS, "McNemar prompt_strict", "McNemar prompt_loose"]
PAIRED_NOTE = (
    "Differences in points, later minus earlier, on the prompts both were scored on, with the paired "
    "bootstrap 95% interval (prompts resampled, both sides recomputed; * = the interval excludes 0). "
    "McNemar: exact two-sided p-value on the discordant prompts, with the prompts gained (+) and lost (-)."
)


def _paired_cells(c: PairedComparison) -> list[str]:
    return [
        str(c.n),
        *(_difference(c, m) for m in IFEVAL_METRICS),
        *(_mcnemar(c, m) for m in ("prompt_strict", "prompt_loose")),
    ]


def paired_versions_table(reports: list[RunReport]) -> Table:
    """Each run's versions against v0 and against the previous version, per split."""
    rows = []
    for r in reports:
        for split, label in SPLITS.items():
            rows += [[r.name(), label, c.label, *_paired_cells(c)] for c in r.comparisons[split]]
    header = ["arm", "split", "comparison", "prompts", *PAIRED_HEADER]
    return Table("Paired differences between versions (points)", header, rows, id="paired", note=PAIRED_NOTE)


def paired_arms_table(reports: list[RunReport]) -> Table:
    """Each other arm minus the first run at the same actor version (v0 is shared and left out)."""
    base, rows = reports[0], []
    for r in reports[1:]:
        for split, label in SPLITS.items():
            mine, theirs = r.records(split), base.records(split)
            for version, records in mine.items():
                before = theirs.get(version)
                if version == "v0" or not records or not before:
                    continue
                c = compare_paired(before, records, base.name(), r.name())
                rows.append([c.label, version, label, *_paired_cells(c)])
    header = ["arm", "version", "split", "prompts", *PAIRED_HEADER]
    title = f"Difference from {base.name()} at the same version (points, paired)"
    return Table(title, header, rows, id="paired-arms", note=PAIRED_NOTE)


def version_table(reports: list[RunReport], split: str = "ifeval", per_run: bool = False) -> Table:
    """IFEval (or the validation split) of every evaluated actor version: rows (arm, version)."""
    header = ([] if per_run else ["arm"]) + ["version", *IFEVAL_METRICS, "average", "prompts"]
    rows = []
    for r in reports:
        for v, row in r.scores_by_version(split).items():
            cells = [
                v,
                *(_ci(row, m) for m in IFEVAL_METRICS),
                _pct(row["average"]),
                str(row.get("n_prompts", "-")),
            ]
            rows.append(cells if per_run else [r.name(), *cells])
    if split == "ifeval":
        title = "IFEval (% with 95% bootstrap CI over prompts)" if per_run else "IFEval by actor version"
    else:
        title = "Validation split (% with 95% bootstrap CI; the recipe-tuning metric, not IFEval)"
        title = title if per_run else "Validation split (recipe tuning) by actor version"
    return Table(title, header, rows, id=None)


def _judge_scores(r: RunReport, version: str) -> dict[str, Estimate]:
    """The refiner's scores with intervals (from the per-pair records; the manifest's otherwise)."""
    rows = r.eval_rows.of("judge")
    if version in rows and rows[version].records:
        return judge_estimates(judge_labels(rows[version].records))
    return estimates_from_manifest(r.judge_by_version().get(version, {}))


def judge_table(reports: list[RunReport], per_run: bool = False) -> Table:
    """Judge accuracy per refiner version with 95% intervals, then the trivial judges on the same
    number of pairs (always-Yes and always-No are exact; the coin flip's range is its own)."""
    rows, sizes = [], []
    for r in reports:
        for v, row in r.judge_by_version().items():
            scores = _judge_scores(r, v)
            n = row.get("n")
            cells = [v, "refiner", str(n if n is not None else "-")]
            cells += [_estimate(scores.get(s)) for s in JUDGE_SCORES]
            cells += [_pct(row.get("invalid_rate")), _pct(row.get("undecided_rate"))]
            rows.append(cells if per_run else [r.name(), *cells])
            if isinstance(n, int) and n not in sizes:
                sizes.append(n)
    for n in sizes:
        for name, scores in trivial_judges(n).items():
            cells = ["", name, str(n), *(_estimate(scores[s]) for s in JUDGE_SCORES), "-", "-"]
            rows.append(cells if per_run else ["", *cells])
    header = ([] if per_run else ["arm"]) + ["version", "judge", "n", "pairwise", "pointwise"]
    header += ["pointwise F1", "invalid", "undecided"]
    note = (
        "In %, 95% bootstrap interval over the held-out pairs. A pair counts as right only when the "
        "preferred output passes and the other fails; pointwise scores each of the 2n outputs "
        "(preferred should pass, other fail; undecided is wrong); F1 of the 'passes' class. Trivial "
        "judges, scored by the same rules: "
        + "; ".join(f"{name} {how}" for name, how in TRIVIAL_JUDGES.items())
        + "."
    )
    title = "Judge accuracy (%)" if per_run else "Judge accuracy by refiner version (%)"
    return Table(title, header, rows, id="judge" if not per_run else None, note=note)


def settings_table(reports: list[RunReport]) -> Table:
    """The config fields whose values differ between the runs (a tuning sweep's points, the arms'
    one change each), from each run's recorded config."""
    header, rows = settings_rows([r.name() for r in reports], [with_defaults(r.config) for r in reports])
    note = None if len(header) > 1 else "The runs' configs are the same but for their names."
    return Table("Settings that differ between the runs", header, rows, id="settings", note=note)


def wall_table(reports: list[RunReport]) -> Table:
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
    return Table("Wall time", header, rows)


def _sample_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every response of the sample stage's records."""
    return [text for row in records for text in row.get("responses") or []]


def _judge_texts(records: list[dict[str, Any]]) -> list[str]:
    """Every judgment the judge stage sampled (all votes of every response)."""
    return [
        judgment
        for row in records
        for response in row.get("responses") or []
        for judgment in response.get("judgments") or []
    ]


def _refine_texts(records: list[dict[str, Any]]) -> list[str]:
    """The refiner's completions kept in the search trees: each child node's raw completion, else
    its parsed refinement."""
    return [
        node.get("raw") or node["response"]
        for tree in records
        for node in tree.get("nodes") or []
        if node.get("parent") is not None
    ]


STAGE_TEXTS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "sample": _sample_texts,
    "judge": _judge_texts,
    "refine": _refine_texts,
}
"""The stages whose completions the report can read back, to count the ones that end in a loop."""


def _loops(texts: list[str] | None) -> str:
    """``213/541 (39.4%)`` of ``texts`` ending in a verbatim loop; ``-`` when they are not at hand."""
    if not texts:
        return "-"
    loops, total = count_loops(texts)
    return f"{loops}/{total} ({100 * loops / total:.1f}%)"


CutRow = tuple[str, str, str, Callable[[], list[str] | None]]
"""(iteration or ``eval``, stage, share cut, the texts behind it when asked)."""


def _cut_rows(r: RunReport) -> list[CutRow]:
    """The shares cut at max_new_tokens per stage (engine counts) and per evaluated version; the
    texts are read only for the table that counts their loops (the flags need the shares alone)."""

    def stage_texts(t: int, stage: str) -> Callable[[], list[str] | None]:
        def texts() -> list[str] | None:
            records = r.stage_records(t, stage) if stage in STAGE_TEXTS else None
            return None if records is None else STAGE_TEXTS[stage](records)

        return texts

    def eval_texts(split: str, v: str) -> Callable[[], list[str] | None]:
        def texts() -> list[str] | None:
            answered = r.eval_rows.of(split)
            return [x["response"] for x in answered[v].responses] if v in answered else None

        return texts

    rows: list[CutRow] = []
    for it in r.iterations:
        t = it["iteration"]
        for s in it["stages"]:
            if s.get("completions"):
                share = _share(s.get("length_capped"), s["completions"])
                rows.append((str(t), s["stage"], share, stage_texts(t, s["stage"])))
    for split, label in SPLITS.items():
        for v, row in r.scores_by_version(split).items():
            fraction, n = row.get("length_capped_share"), row.get("n_prompts")
            capped = round(fraction * n) if fraction is not None and n else None
            rows.append(("eval", f"{label} {v}", _share(capped, n), eval_texts(split, v)))
    return rows


def truncation_table(r: RunReport) -> Table:
    """Completions cut at max_new_tokens: per stage (engine counts), and IFEval answers per version;
    beside each, how many of the texts end in a verbatim loop, which a higher limit would not end."""
    rows = [[it, stage, share, _loops(texts())] for it, stage, share, texts in _cut_rows(r)]
    note = (
        f"{FLAG} marks {100 * CAPPED_FLAG:.0f}% or more: the limit cuts too many answers to read the scores. "
        f"Ending in a loop: the last {LOOP_TAIL} whitespace tokens repeat a span of at most {LOOP_PERIOD} "
        "tokens verbatim (`shared.degeneration`), so no limit would have ended the answer; counted over "
        "the texts the stage kept (samples, every sampled judgment, the refinements in the search trees, "
        "eval answers), a lower bound (paraphrased loops are missed)."
    )
    header = ["iteration", "stage", "cut / completions", "ending in a loop"]
    return Table("Completions cut at max_new_tokens", header, rows, note=note)


GUARD_REASONS = ("format_echo", "too_short", "low_overlap")


def refinement_audit_table(r: RunReport) -> Table:
    """The refinements the judge accepted (each tree's success: a pair's chosen response), checked
    by the refinement guard's rules (``shared.refinement_guard``: the run's ``search.guard``, else
    its defaults). A judge of verifiable constraints passes text that restates the constraint; in
    a run without the guard this shows how many of its pairs were built on such text."""
    from shared.config import RefinementGuard
    from shared.records import TreeRow
    from shared.refinement_guard import AUDIT_SIGNS, audit_signs, unfaithful_reason

    configured = (r.config.get("search") or {}).get("guard")
    guard = RefinementGuard.model_validate(configured) if configured is not None else RefinementGuard()
    rows = []
    for it in r.iterations:
        t = it["iteration"]
        accepted, reasons, refused_in_search = 0, dict.fromkeys(GUARD_REASONS, 0), 0
        signs = dict.fromkeys(AUDIT_SIGNS, 0)
        for record in r.stage_records(t, "refine") or []:
            tree = TreeRow.from_record(record)
            refused_in_search += tree.unfaithful
            success = tree.success
            if success is None or success.parent is None:
                continue
            accepted += 1
            reason = unfaithful_reason(tree.nodes[success.parent].response, success.response, guard)
            if reason is not None:
                reasons[reason] += 1
                continue
            for sign in audit_signs(success.response, guard.min_words):
                signs[sign] += 1
        if accepted or refused_in_search:
            refused = sum(reasons.values())
            share = f"{refused}/{accepted} ({100 * refused / accepted:.1f}%)" if accepted else "-"
            rows.append(
                [
                    str(t),
                    str(accepted),
                    share,
                    *map(str, reasons.values()),
                    *map(str, signs.values()),
                    str(refused_in_search),
                ]
            )
    source = (
        "the run's search.guard" if configured is not None else "the guard's default rules (the run had none)"
    )
    note = (
        f"Each tree's accepted refinement checked by {source}: a format echo (the refiner's own format "
        "phrases), far shorter than the response it repairs, or sharing few of its words. Of those "
        "it lets through, 'repetition' counts refinements in which one word makes up more than a "
        "quarter of the words (a loop), 'format_fragment' those holding a piece of the refine "
        "format; the guard does not refuse these, the counts show what passed it. The last column "
        "counts the refinements the guard refused during the search (0 without one)."
    )
    header = [
        "iteration",
        "accepted",
        "refused by the rules",
        *GUARD_REASONS,
        *(f"passed: {sign}" for sign in AUDIT_SIGNS),
        "refused in search",
    ]
    return Table("Accepted refinements under the refinement guard", header, rows, note=note)


def _describe(value: Any) -> str:
    """A resolved-settings value in one line: ``actor: engine=vllm version=0.32.0; checker: 0.1.0``."""
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if isinstance(v, dict):
                parts.append(f"{k}: " + " ".join(f"{a}={b}" for a, b in v.items()))
            elif isinstance(v, list):
                parts.append(f"{k}: " + " | ".join(_describe(x) for x in v))
            else:
                parts.append(f"{k}: {v}")
        return "; ".join(parts)
    return str(value)


def resolved_table(r: RunReport) -> Table:
    """What each stage resolved to on its machine, one row per stage and distinct setting."""
    seen: dict[tuple[str, str], list[int]] = {}
    for it in r.iterations:
        for s in it["stages"]:
            if s.get("resolved"):
                seen.setdefault((s["stage"], _describe(s["resolved"])), []).append(it["iteration"])
    rows = [[stage, ", ".join(map(str, its)), text] for (stage, text), its in seen.items()]
    return Table("Resolved settings per stage", ["stage", "iterations", "resolved"], rows)


# --- charts (drawn by the dashboard's chart code in the HTML page) -------------------------------


def _finite(values: list[Any]) -> list[float | None]:
    return [float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in values]


def _chart(
    chart_id: str, title: str, labels: list[str], series: dict[str, list[Any]], **opts: Any
) -> dict | None:
    """A ``lineChart`` options object, or None when no series has a number (no empty boxes)."""
    clean = {name: _finite(values) for name, values in series.items()}
    if not any(v is not None for values in clean.values() for v in values):
        return None
    out = {"id": chart_id, "title": title, "labels": labels, **opts}
    out["series"] = [{"name": name, "values": values} for name, values in clean.items()]
    return out


def run_charts(r: RunReport, k: int) -> list[dict]:
    labels = [f"t={it['iteration']}" for it in r.iterations]
    charts = [
        _chart(
            f"chart-{k}-{m}",
            m.replace("_", " "),
            labels,
            {m: [it["metrics"].get(m) for it in r.iterations]},
            xTitle="iteration",
            yMin=0,
        )
        for m in COUNT_METRICS
    ]
    for split, label in SPLITS.items():
        scores = r.scores_by_version(split)
        charts.append(
            _chart(
                f"chart-{k}-{split}",
                f"{label} per actor version",
                list(scores),
                {m: [row.get(m) for row in scores.values()] for m in IFEVAL_METRICS},
                xTitle="actor version",
                yMin=0,
                yMax=1,
            )
        )
    judge = r.judge_by_version()
    charts.append(
        _chart(
            f"chart-{k}-judge",
            "judge accuracy per refiner version",
            list(judge),
            {m: [row.get(m) for row in judge.values()] for m in JUDGE_METRICS},
            xTitle="refiner version",
            yMin=0,
            yMax=1,
        )
    )
    for it in r.iterations:
        for t in it["training"]:
            curve = t["loss_curve"]
            charts.append(
                _chart(
                    f"chart-{k}-loss-{it['iteration']}-{t['stage']}",
                    f"iter {it['iteration']} {t['stage']} loss",
                    [str(i + 1) for i in range(len(curve))],
                    {"loss": curve},
                    xTitle="step",
                )
            )
    return [c for c in charts if c is not None]


def arms_charts(reports: list[RunReport]) -> list[dict]:
    """IFEval prompt-level loose (the goal's metric) and the average per version, one line per arm."""
    versions: list[str] = []
    for r in reports:
        versions += [v for v in r.ifeval_by_version() if v not in versions]
    charts = []
    for metric in ("prompt_loose", "average"):
        series = {r.name(): [r.ifeval_by_version().get(v, {}).get(metric) for v in versions] for r in reports}
        charts.append(
            _chart(
                f"chart-arms-{metric}",
                f"IFEval {metric.replace('_', ' ')} per arm",
                versions,
                series,
                xTitle="actor version",
                yMin=0,
                yMax=1,
            )
        )
    return [c for c in charts if c is not None]


# --- the document --------------------------------------------------------------------------------


def _flags(r: RunReport) -> list[str]:
    """Where a run's truncation share reaches the flag: ``sample@0``, ``IFEval v1``."""
    return [
        stage if it == "eval" else f"{stage}@{it}" for it, stage, share, _ in _cut_rows(r) if FLAG in share
    ]


def summary_section(reports: list[RunReport]) -> Section:
    """What a reader needs first: the comparison and the paired differences."""
    title = "Comparison of arms" if len(reports) > 1 else "Summary"
    blocks: list[Block] = [Heading(2, title), comparison_table(reports)]
    if len(reports) > 1:
        blocks.append(settings_table(reports))
    blocks.append(paired_versions_table(reports))
    if len(reports) > 1:
        blocks.append(paired_arms_table(reports))
    for r in reports:
        if flagged := _flags(r):
            blocks.append(
                Text(f"{FLAG} `{r.run_id}`: 5% or more cut at max_new_tokens in " + ", ".join(flagged))
            )
    if len(reports) > 1:
        blocks += [
            Charts("charts-arms", arms_charts(reports)),
            version_table(reports),
            version_table(reports, "validation"),
            judge_table(reports),
            wall_table(reports),
        ]
    return Section("summary", blocks)


def run_section(r: RunReport, k: int) -> Section:
    blocks: list[Block] = [Heading(2, f"Run `{r.run_id}`", id=f"run-{k}"), Text(f"Directory: `{r.root}`")]
    if r.forked_from is not None:
        reused = ", ".join(f"{s}@{t}" for t, s in sorted(r.reused)) or "nothing"
        blocks.append(Text(f"Forked from `{r.forked_from}`, reusing {reused} (marked *reused* below)."))
        if r.taken_evaluations:
            taken = ", ".join(r.taken_evaluations)
            blocks.append(
                Text(f"Its eval stages took the source's scores of the versions both runs share: {taken}.")
            )
    blocks.append(Text("Stage config hashes: " + ", ".join(f"{k} `{v}`" for k, v in r.hashes.items())))
    blocks += [
        resolved_table(r),
        version_table([r], "validation", per_run=True),
        version_table([r], per_run=True),
        judge_table([r], per_run=True),
        truncation_table(r),
        refinement_audit_table(r),
    ]
    for split, label in SPLITS.items():
        for v, rows in r.eval_rows.of(split).items():
            if rows.note:
                blocks.append(Text(f"{label} {v}: per-prompt records {rows.note}."))
    blocks.append(Charts(f"charts-{k}", run_charts(r, k)))
    blocks += [counts_table(r), cost_table(r), *training_texts(r)]
    blocks.append(Details("config", json.dumps(r.config, indent=2, sort_keys=True)))
    return Section(f"run-section-{k}", blocks)


def counts_table(r: RunReport) -> Table:
    """What each iteration produced: one row per count, one column per iteration (as the dashboard)."""
    names: list[str] = []
    for it in r.iterations:
        names += [k for k in it["metrics"] if k not in names]
    rows = [[k.replace("_", " "), *(_num(it["metrics"].get(k)) for it in r.iterations)] for k in names]
    return Table(
        "Counts per iteration", ["metric", *(f"iter {it['iteration']}" for it in r.iterations)], rows
    )


def cost_table(r: RunReport) -> Table:
    """What each stage of each iteration cost; a stage reused from the fork's source is marked."""
    header = ["iteration", "stage", "shards", "engine calls", "tokens", "cut at max_new_tokens", "wall s"]
    rows = [
        [
            str(it["iteration"]),
            s["stage"] + (" *reused*" if (it["iteration"], s["stage"]) in r.reused else ""),
            str(s["shards"]),
            str(s["engine_calls"]),
            str(s["tokens_generated"]),
            _share(s.get("length_capped"), s.get("completions")),
            f"{s['seconds']:.1f}",
        ]
        for it in r.iterations
        for s in it["stages"]
    ]
    return Table("Cost per stage", header, rows)


def training_texts(r: RunReport) -> list[Block]:
    return [
        Text(
            f"Training {tr['stage']} -> {tr['new_version']} (iteration {it['iteration']}): loss per step "
            f"[{', '.join(f'{v:.3g}' for v in tr['loss_curve'])}]"
        )
        for it in r.iterations
        for tr in it["training"]
    ]


def name_runs(reports: list[RunReport]) -> None:
    """Runs of the report that would share a name in its tables are named by their run ids."""
    runs_named: dict[str, set[str]] = {}
    for r in reports:
        runs_named.setdefault(r.name(), set()).add(r.run_id)
    for r in reports:
        if len(runs_named[r.name()]) > 1:  # one run given twice keeps its name
            r.label = r.run_id


def build_document(reports: list[RunReport]) -> list[Block]:
    """The report's content, in reading order (an empty list gives the bare title)."""
    blocks: list[Block] = [Heading(1, "spar report")]
    if not reports:
        return blocks
    name_runs(reports)
    blocks.append(summary_section(reports))
    blocks += [run_section(r, k) for k, r in enumerate(reports)]
    return blocks


def render_markdown(reports: list[RunReport]) -> str:
    return to_markdown(build_document(reports))


def write_report(run_dirs: list[Path], out: Path, fmt: str = "html") -> Path:
    reports = [load_run(d) for d in run_dirs]
    if fmt == "html":
        from .report_html import render_html

        text = render_html(reports)
    else:
        text = render_markdown(reports)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
