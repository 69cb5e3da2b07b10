"""What the ``eval`` stage kept per prompt and per judged pair, read back from a run directory.

The manifest holds each version's totals; paired statistics and exported generations need the rows
behind them, which the stage writes to ``iter_<t>/eval/shard_*.jsonl``::

    {"kind": "ifeval" | "validation", "version": "v1 (/path)",
     "responses": [{key, prompt, response}], "records": [{key, instruction_id_list, strict, loose}]}
    {"kind": "judge", "version": ..., "records": [{index, label, correct, preferred, other, ...}]}

Runs written before the stage kept ``records`` for its IFEval rows still have the ``responses``:
those are scored again with the same checker (:func:`workers.evaluation.ifeval.score_responses`),
the prompts matched by key, which is also how a reader re-scores exported generations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.runtime.artifacts import read_jsonl

SCORED_KINDS = ("ifeval", "validation")


@dataclass
class VersionRows:
    """One evaluated version's rows of one kind (the latest evaluation wins, as in the manifest)."""

    version: str
    label: str
    responses: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None
    """Per prompt (IFEval, validation) or per pair (judge); None when they could not be had."""
    note: str | None = None
    """Why ``records`` are missing, or that they were re-scored from the responses."""


@dataclass
class EvalRows:
    """Every evaluated version's rows of a run, by kind then version (in order of evaluation)."""

    by_kind: dict[str, dict[str, VersionRows]] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, VersionRows]:
        return self.by_kind.get(kind, {})


def version_name(label: str) -> str:
    """``v1`` from a manifest label such as ``v1 (/runs/x/models/actor/v1)``."""
    return label.split(" ", 1)[0]


def read_eval_rows(root: Path, iterations: int) -> EvalRows:
    """The eval shards' rows of iterations ``0..iterations-1``, the raw ``records`` as written."""
    out = EvalRows()
    for t in range(iterations):
        for shard in sorted((root / f"iter_{t}" / "eval").glob("shard_*.jsonl")):
            for row in read_jsonl(shard):
                kind, label = str(row.get("kind")), str(row.get("version", ""))
                records = row.get("records")
                out.by_kind.setdefault(kind, {})[version_name(label)] = VersionRows(
                    version=version_name(label),
                    label=label,
                    responses=list(row.get("responses") or []),
                    records=list(records) if records else None,
                )
    return out


Items = Callable[[], list[dict[str, Any]]]
"""Loads the scorer's items (key, prompt, instruction_id_list, kwargs) of a kind, when asked."""


def rescore_missing(rows: EvalRows, items_for: dict[str, Items]) -> None:
    """Fill in missing per-prompt records by scoring the kept responses again with the checker.

    ``items_for[kind]`` loads the prompts the responses answer (IFEval's bundled file, the run's
    validation file). Whatever cannot be re-scored (no responses, the checker or the file missing,
    a key not in the file) keeps ``records = None`` and says why in ``note``.
    """
    for kind in SCORED_KINDS:
        for v in rows.of(kind).values():
            if v.records is not None:
                continue
            if not v.responses:
                v.note = "no per-prompt records or responses kept"
                continue
            try:
                from workers.evaluation.ifeval import score_responses

                by_key = {item["key"]: item for item in items_for[kind]()}
                items = [by_key[r["key"]] for r in v.responses]
                v.records = score_responses(items, [r["response"] for r in v.responses])["records"]
                v.note = "re-scored from the kept responses"
            except (ImportError, OSError, KeyError, ValueError) as exc:
                v.note = f"cannot be re-scored: {type(exc).__name__}: {str(exc)[:120]}"
