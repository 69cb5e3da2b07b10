"""The report's statistics: what tells a change from noise.

* **Paired IFEval differences.** Two versions (or two arms at one version) answer the same prompts,
  so they are compared prompt by prompt (:mod:`shared.paired`): each metric's difference with a
  paired bootstrap 95% interval (prompts resampled, both sides recomputed on the same resample;
  instruction-level units are (passed, total) per prompt), and for the two prompt-level metrics
  the exact McNemar test on the discordant prompts, with how many were gained and lost.
* **Judge accuracy with intervals.** Pairwise, pointwise and pointwise F1, each with a 95% bootstrap
  interval over the held-out pairs, scored exactly as :mod:`shared.evaluation.judge_eval` scores.
* **Trivial judges on the same items**, scored by the same rules: always-Yes, always-No, and a coin
  flip (expected score and the central 95% range of its score, exact, on these n items). A judge
  is only worth something where it beats all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared.bootstrap import Units, bootstrap_interval
from shared.evaluation.judge_eval import pointwise_scores
from shared.paired import McNemar, PairedDifference, mcnemar_exact, paired_bootstrap

IFEVAL_METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")
PROMPT_LEVEL = ("prompt_strict", "prompt_loose")
JUDGE_SCORES = ("pairwise", "pointwise", "pointwise_f1")
BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


# The resamplings are the report's cost (about 0.6 s per metric and comparison on 541 prompts on one
# core). They are pure functions of their units, so a server that builds a run's report on every
# request (``GET /v1/runs/{id}/report``) computes each only once.
@lru_cache(maxsize=1024)
def _paired(
    before: tuple[tuple[int, int], ...], after: tuple[tuple[int, int], ...], samples: int, seed: int
) -> PairedDifference:
    return paired_bootstrap(before, after, samples=samples, level=LEVEL, seed=seed)


@lru_cache(maxsize=1024)
def _interval(units: tuple[tuple[int, int], ...], samples: int, seed: int) -> tuple[float, float]:
    return bootstrap_interval(units, samples=samples, level=LEVEL, seed=seed)


# --- paired IFEval differences -------------------------------------------------------------------


def prompt_unit(record: dict[str, Any], metric: str) -> tuple[int, int]:
    """One prompt's (passed, total) for ``metric``: all instructions or each instruction."""
    level, mode = metric.split("_")
    follows = [bool(v) for v in record[mode]]
    return (int(all(follows)), 1) if level == "prompt" else (sum(follows), len(follows))


@dataclass(frozen=True)
class PairedComparison:
    """``after - before`` on the prompts both were scored on."""

    before: str
    after: str
    n: int
    differences: dict[str, PairedDifference]
    tests: dict[str, McNemar]
    """Exact McNemar per prompt-level metric."""

    @property
    def label(self) -> str:
        return f"{self.after} - {self.before}"


def compare_paired(
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    before_name: str,
    after_name: str,
    samples: int = BOOTSTRAP_SAMPLES,
) -> PairedComparison:
    """Pair two versions' per-prompt records by key (the prompts both have, in ``before``'s order)."""
    later = {r["key"]: r for r in after}
    pairs = [(r, later[r["key"]]) for r in before if r["key"] in later]
    differences, tests = {}, {}
    for seed, metric in enumerate(IFEVAL_METRICS):
        b = tuple(prompt_unit(x, metric) for x, _ in pairs)
        a = tuple(prompt_unit(y, metric) for _, y in pairs)
        differences[metric] = _paired(b, a, samples, seed)
        if metric in PROMPT_LEVEL:
            tests[metric] = mcnemar_exact([bool(p) for p, _ in b], [bool(p) for p, _ in a])
    return PairedComparison(before_name, after_name, len(pairs), differences, tests)


def version_comparisons(
    records: dict[str, list[dict[str, Any]] | None], samples: int = BOOTSTRAP_SAMPLES
) -> list[PairedComparison]:
    """Each version against the first (v0) and against the one before it (when that is not v0).

    ``records`` maps versions, in order, to their per-prompt records; a version without records
    is left out of every comparison.
    """
    scored = [(v, r) for v, r in records.items() if r]
    if len(scored) < 2:
        return []
    (first, base), out = scored[0], []
    for k in range(1, len(scored)):
        version, rows = scored[k]
        out.append(compare_paired(base, rows, first, version, samples))
        if k >= 2:
            previous, prev_rows = scored[k - 1]
            out.append(compare_paired(prev_rows, rows, previous, version, samples))
    return out


# --- judge accuracy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A score with its 95% interval (bootstrap for the refiner, the exact range for a coin flip)."""

    value: float
    low: float | None = None
    high: float | None = None


Labels = Sequence[tuple[str, str]]
"""Per held-out pair: the judge's label of the preferred and of the other output
(``pass``/``fail``/``undecided``)."""


def _judge_units(labels: Labels) -> dict[str, Units]:
    """Per-pair units whose ratio of sums is each score, so the bootstrap recomputes them exactly.

    pairwise: (preferred passes and other fails, 1); pointwise: (right outputs of the two, 2);
    F1 of the "passes" class is 2TP / (2TP + FP + FN) = sum(2 pp) / sum(pp + op + 1), with pp/op
    whether the preferred/other output was judged pass (FN = preferred outputs not judged pass).
    """
    units: dict[str, list[tuple[int, int]]] = {s: [] for s in JUDGE_SCORES}
    for preferred, other in labels:
        pp, of, op = preferred == "pass", other == "fail", other == "pass"
        units["pairwise"].append((int(pp and of), 1))
        units["pointwise"].append((int(pp) + int(of), 2))
        units["pointwise_f1"].append((2 * int(pp), int(pp) + int(op) + 1))
    return units


def score_labels(labels: Labels) -> dict[str, float]:
    """The three scores of a judge's labels, by ``judge_eval``'s rules (undecided counts as wrong)."""
    n = len(labels)
    correct = sum(p == "pass" and o == "fail" for p, o in labels)
    pp = sum(p == "pass" for p, _ in labels)
    of = sum(o == "fail" for _, o in labels)
    op = sum(o == "pass" for _, o in labels)
    point = pointwise_scores(pp, of, op, n)
    return {
        "pairwise": correct / n if n else 0.0,
        "pointwise": point["pointwise_accuracy"],
        "pointwise_f1": point["pointwise_f1"],
    }


def judge_labels(records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (preferred, other) labels of the eval stage's judge records."""
    return [(str(r["preferred"]), str(r["other"])) for r in records]


def judge_estimates(labels: Labels, samples: int = BOOTSTRAP_SAMPLES) -> dict[str, Estimate]:
    """Each score of the refiner with its 95% bootstrap interval over the held-out pairs."""
    points = score_labels(labels)
    units = _judge_units(labels)
    out = {}
    for seed, name in enumerate(JUDGE_SCORES):
        low, high = _interval(tuple(units[name]), samples, seed)
        out[name] = Estimate(points[name], low, high)
    return out


TRIVIAL_JUDGES: dict[str, str] = {
    "always-Yes": "judges every output pass",
    "always-No": "judges every output fail",
    "coin flip": "judges each output pass with probability 1/2, independently; expected score "
    "[central 95% range of its score on these pairs, exact]",
}


def trivial_judges(n: int) -> dict[str, dict[str, Estimate]]:
    """The trivial judges' scores on ``n`` held-out pairs, by the same rules as the refiner's."""
    if n < 1:
        return {}
    return {
        "always-Yes": {k: Estimate(v) for k, v in score_labels([("pass", "pass")] * n).items()},
        "always-No": {k: Estimate(v) for k, v in score_labels([("fail", "fail")] * n).items()},
        "coin flip": coin_flip(n),
    }


Distribution = list[tuple[float, float]]
"""(value, probability) pairs."""


def coin_flip(n: int) -> dict[str, Estimate]:
    """A coin-flip judge's expected scores and central 95% ranges on ``n`` pairs, computed exactly.

    pairwise: the pairs it gets right are Binomial(n, 1/4) (pass and fail, each 1/2); pointwise:
    its right outputs are Binomial(2n, 1/2); F1 = 2pp / (n + pp + op) with the preferred and the
    other outputs it passes, pp and op, independent Binomial(n, 1/2).
    """
    whole = 4**n
    pairwise = [(c / n, math.comb(n, c) * 3 ** (n - c) / whole) for c in range(n + 1)]
    pointwise = [(k / (2 * n), math.comb(2 * n, k) / whole) for k in range(2 * n + 1)]
    f1 = [
        (2 * pp / (n + pp + op), math.comb(n, pp) * math.comb(n, op) / whole)
        for pp in range(n + 1)
        for op in range(n + 1)
    ]
    return {name: _summarise(d) for name, d in zip(JUDGE_SCORES, (pairwise, pointwise, f1), strict=True)}


def _summarise(distribution: Distribution) -> Estimate:
    """Expected value and the central ``LEVEL`` range of a discrete distribution."""
    expected = sum(v * p for v, p in distribution)
    ordered = sorted(distribution)
    tail = (1 - LEVEL) / 2
    return Estimate(expected, _quantile(ordered, tail), _quantile(ordered, 1 - tail))


def _quantile(ordered: Distribution, q: float) -> float:
    """The smallest value whose cumulative probability reaches ``q`` (``ordered`` by value)."""
    total = 0.0
    for value, p in ordered:
        total += p
        if total >= q - 1e-12:
            return value
    return ordered[-1][0]


def estimates_from_manifest(row: dict[str, Any]) -> dict[str, Estimate]:
    """The refiner's scores as the manifest has them (older runs kept no per-pair records)."""
    names: dict[str, str] = {
        "pairwise": "accuracy",
        "pointwise": "pointwise_accuracy",
        "pointwise_f1": "pointwise_f1",
    }
    get: Callable[[str], Any] = row.get
    return {s: Estimate(float(get(k))) for s, k in names.items() if get(k) is not None}
