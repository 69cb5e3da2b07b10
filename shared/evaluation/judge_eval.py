"""Pairwise judge accuracy of a refiner on LLMBar-style data (SPaR reports it: 53.8 -> 68.3).

Each item is ``{input, output_1, output_2, label}``; ``label`` (1 or 2) names the output that
follows the instruction better. The refiner never sees the pair: it judges each output on its own
with the product's judge (:class:`shared.judging.Judge`: the product's judge template, ``votes``
sampled judgments, majority vote, ties undecided), exactly as it judges during self-play. An item
counts as correct only when the preferred output PASSES and the other one FAILS: a judge that says
Yes to everything scores 0, not 50%.

All 2N judgments go to the engine in one batched call (more only for tie re-judging when asked).
Besides accuracy we report the share of sampled judgments whose verdict cannot be parsed (a
refiner that breaks the answer format is useless for self-play) and the share of outputs left
undecided by the vote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.engine import Engine, MeteredEngine
from shared.errors import JudgeDataError  # noqa: F401  (also importable from here)
from shared.judging import Judge, Judgment
from shared.verdict import Verdict


@dataclass(frozen=True)
class PairItem:
    """One pairwise comparison; ``label`` is 1 or 2, the preferred output."""

    input: str
    output_1: str
    output_2: str
    label: int

    @property
    def preferred(self) -> str:
        return self.output_1 if self.label == 1 else self.output_2

    @property
    def other(self) -> str:
        return self.output_2 if self.label == 1 else self.output_1


def _check_item(row: object) -> tuple[PairItem | None, str | None]:
    if not isinstance(row, dict):
        return None, "not a JSON object"
    for name in ("input", "output_1", "output_2"):
        if not isinstance(row.get(name), str):
            return None, f"'{name}' must be a string"
    if not row["input"].strip():
        return None, "'input' is empty"
    label = row.get("label")
    # LLMBar stores an int; a "1"/"2" string is accepted, a bool (an int subclass) is not.
    if isinstance(label, str) and label.strip() in {"1", "2"}:
        label = int(label)
    if isinstance(label, bool) or label not in (1, 2):
        return None, f"'label' must be 1 or 2, got {row.get('label')!r}"
    return PairItem(row["input"], row["output_1"], row["output_2"], int(label)), None


def parse_pairwise(text: str, source: str = "data") -> list[PairItem]:
    """Items from JSONL (one object per line, blank lines skipped) or one JSON array (LLMBar's files).

    Every malformed item is reported, by line number for JSONL and by position for an array, and
    nothing is returned: a silently shortened benchmark would give a wrong accuracy.
    """
    problems: list[tuple[int, str]] = []
    items: list[PairItem] = []
    rows: list[tuple[int, object]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JudgeDataError(source, [(0, f"invalid JSON array: {exc}")]) from exc
        rows = list(enumerate(data, start=1))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append((number, f"invalid JSON: {exc.msg}"))
    for number, row in rows:
        item, problem = _check_item(row)
        if problem is not None:
            problems.append((number, problem))
        elif item is not None:
            items.append(item)
    if problems:
        raise JudgeDataError(source, sorted(problems))
    if not items:
        raise JudgeDataError(source, [(0, "no items")])
    return items


def load_pairwise(path: str | Path, limit: int | None = None) -> list[PairItem]:
    """The items of a pairwise file (see :func:`parse_pairwise`); ``limit`` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge data file {str(path)!r} does not exist")
    items = parse_pairwise(path.read_text(encoding="utf-8"), source=str(path))
    return items[:limit] if limit is not None else items


def _label_name(judgment: Judgment) -> str:
    return {Verdict.PASS: "pass", Verdict.FAIL: "fail", None: "undecided"}[judgment.label]


def pointwise_scores(preferred_pass: int, other_fail: int, other_pass: int, n: int) -> dict[str, float]:
    """The paper's pointwise view: each of the 2N outputs judged on its own, as a binary classifier.

    Gold: the preferred output should pass (the positive class, "follows the instruction"), the
    other should fail. An undecided output counts as wrong. ``pointwise_accuracy`` is the share of
    the 2N outputs judged right; ``pointwise_f1`` the F1 of the positive class (precision: of the
    outputs judged pass, how many are preferred ones; recall: of the preferred outputs, how many pass).
    """
    judged_pass = preferred_pass + other_pass
    precision = preferred_pass / judged_pass if judged_pass else 0.0
    recall = preferred_pass / n if n else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pointwise_accuracy": (preferred_pass + other_fail) / (2 * n) if n else 0.0,
        "pointwise_precision": precision,
        "pointwise_recall": recall,
        "pointwise_f1": f1,
    }


def evaluate_judge(
    engine: Engine,
    items: Sequence[PairItem],
    votes: int = 5,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    tie_retries: int = 0,
) -> dict[str, Any]:
    """Judge both outputs of every item and score the refiner as a pairwise judge.

    Returns ``n``; ``accuracy`` (per pair: the preferred output passes and the other fails); the
    pointwise ``pointwise_accuracy``, ``_precision``, ``_recall`` and ``_f1`` (see
    :func:`pointwise_scores`); ``invalid_rate`` (share of sampled judgments that parse INVALID);
    ``undecided_rate`` (share of the 2N outputs whose vote is tied); ``pass_rate`` (share of
    outputs judged pass: a judge biased to Yes shows here); ``preferred_pass_rate``;
    ``other_fail_rate``; the judge settings, ``judge_s``, ``engine_calls`` and per-item
    ``records``. The defaults are stage 2's (votes 5, temperature 0.7, ties dropped).
    """
    items = list(items)
    if not items:
        raise ValueError("no items to judge")
    # Metered: the report shows the judging was batched (calls) and what it cost (tokens).
    metered = MeteredEngine(engine)
    judge = Judge(
        metered,
        votes=votes,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        tie_retries=tie_retries,
    )
    pairs = [(item.input, output) for item in items for output in (item.preferred, item.other)]
    started = time.perf_counter()
    judgments = judge.judge(pairs)
    judge_s = time.perf_counter() - started

    correct = preferred_pass = other_fail = passes = undecided = 0
    n_labels = n_invalid = 0
    records: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        preferred, other = judgments[2 * index], judgments[2 * index + 1]
        ok = preferred.label is Verdict.PASS and other.label is Verdict.FAIL
        correct += ok
        preferred_pass += preferred.label is Verdict.PASS
        other_fail += other.label is Verdict.FAIL
        for judgment in (preferred, other):
            passes += judgment.label is Verdict.PASS
            undecided += not judgment.decided
            n_labels += len(judgment.vote.labels)
            n_invalid += judgment.vote.n_invalid
        records.append(
            {
                "index": index,
                "label": item.label,
                "correct": ok,
                "preferred": _label_name(preferred),
                "other": _label_name(other),
                "preferred_votes": [int(v) for v in preferred.vote.labels],
                "other_votes": [int(v) for v in other.vote.labels],
                # every sampled judgment text: what a reader re-scores the verdicts from
                "preferred_judgments": list(preferred.texts),
                "other_judgments": list(other.texts),
            }
        )
    n = len(items)
    return {
        "n": n,
        "accuracy": correct / n,
        "n_correct": correct,
        **pointwise_scores(preferred_pass, other_fail, passes - preferred_pass, n),
        "invalid_rate": n_invalid / n_labels if n_labels else 0.0,
        "undecided_rate": undecided / (2 * n),
        "pass_rate": passes / (2 * n),
        "preferred_pass_rate": preferred_pass / n,
        "other_fail_rate": other_fail / n,
        "votes": votes,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "tie_retries": tie_retries,
        "judge_s": judge_s,
        "engine_calls": metered.stats.calls,
        "generated_tokens": metered.stats.generated_tokens,
        "records": records,
    }
