"""``spar report RUN --export-generations DIR``: the generations behind a report's numbers.

A reader must be able to re-score a published result without running a model, with Google's IFEval
code (see docs/results/README.md). Per evaluated version this writes, gzip-compressed JSON lines:

* ``ifeval_<version>.jsonl.gz``: ``{"key", "prompt", "response"}`` per IFEval prompt, the shape of
  Google's ``input_response_data`` (its reader takes ``prompt`` and ``response`` and ignores
  ``key``); ``validation_<version>.jsonl.gz`` the same for the validation split;
* ``judge_<version>.jsonl.gz``: per held-out pair, the eval stage's record (the refiner's labels,
  votes and every sampled judgment) with the pair itself (``input``, ``preferred_output``,
  ``other_output``) when the run's judge file is still readable;
* ``index.json``: every file with its kind, version, line count and SHA-256.

The gzip headers carry no time or name, so exporting the same run twice gives identical bytes
(what a committed copy needs).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from .eval_records import VersionRows
from .report import RunReport, load_run

KINDS = ("ifeval", "validation", "judge")


def write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` as gzip-compressed JSON lines with a fixed header; returns the SHA-256."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        out.write(data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _judge_pairs(report: RunReport) -> list[Any] | None:
    """The run's held-out pairs in the order the eval stage judged them, if the file is readable."""
    evaluation = report.config.get("evaluation") or {}
    path = evaluation.get("judge_data")
    if not path:
        return None
    from shared.evaluation.judge_eval import load_pairwise

    try:
        return load_pairwise(path, evaluation.get("judge_limit"))
    except (OSError, ValueError):
        return None


def _rows(kind: str, v: VersionRows, pairs: list[Any] | None) -> list[dict[str, Any]]:
    if kind != "judge":
        return [{"key": r["key"], "prompt": r["prompt"], "response": r["response"]} for r in v.responses]
    out = []
    for record in v.records or []:
        row = dict(record)
        index = record.get("index")
        if pairs is not None and isinstance(index, int) and 0 <= index < len(pairs):
            item = pairs[index]
            row |= {"input": item.input, "preferred_output": item.preferred, "other_output": item.other}
        out.append(row)
    return out


def export_generations(report: RunReport, out_dir: Path) -> list[Path]:
    """Write the run's generations under ``out_dir``; returns the files written (index last)."""
    pairs = _judge_pairs(report)
    index: dict[str, Any] = {"run_id": report.run_id, "name": report.name(), "files": {}}
    written = []
    for kind in KINDS:
        for version, rows in report.eval_rows.of(kind).items():
            lines = _rows(kind, rows, pairs)
            if not lines:
                continue
            path = out_dir / f"{kind}_{version}.jsonl.gz"
            digest = write_jsonl_gz(path, lines)
            index["files"][path.name] = {
                "kind": kind,
                "version": version,
                "lines": len(lines),
                "sha256": digest,
            }
            written.append(path)
    index_path = out_dir / "index.json"
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [*written, index_path]


def export_runs(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """One run: its files directly in ``out_dir``; several: one folder per run id under it."""
    written = []
    for run_dir in run_dirs:
        report = load_run(run_dir)
        target = out_dir if len(run_dirs) == 1 else out_dir / report.run_id
        written += export_generations(report, target)
    return written
