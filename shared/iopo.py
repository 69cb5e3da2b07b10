"""IOPO groups from self-play (the product's extension, docs/objectives.md).

A successful tree gives (x, y_neg, y_refined) and the judgment j of y_neg, which lists the
constraints y_neg violates. The refiner rewrites the instruction into x' -- x with those constraints
changed so that y_neg now follows it and y_refined no longer does. Both facts are verified by
judging (majority vote) under x'; a verified group is (x1, y1, x2, y2) = (x, y_refined, x', y_neg).
Every step is batched across all pairs: one rewrite call (plus retries for unparsable replies) and
one judging call (plus tie rounds), whatever the number of pairs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .engine import Engine, GenerationRequest
from .judging import Judges
from .records import IopoGroupRow
from .seeding import derive_seed
from .templates import extract_refined
from .verdict import Verdict

REWRITE_TEMPLATE = """You are given an instruction (the Prompt), an Output that fails it, and a judgement \
that lists the constraints the Output does not satisfy.

[Prompt]
{prompt}
[End of Prompt]

[Output]
{response}
[End of Output]

[Judgement]
{judgment}
[End of Judgement]

Rewrite the Prompt by changing only the constraints the Output violates, so that the Output follows \
the new Prompt exactly. Keep the task and every other constraint as they are. Answer in exactly this format:
Reflection on how to rewrite the Prompt: <which constraints change and how>
Final Rewritten Prompt: [[start]] <the complete new Prompt> [[end]]"""


@dataclass(frozen=True)
class PairForGroup:
    """What a group is made from: a DPO pair and the judgment of its rejected (root) response."""

    key: str
    prompt: str
    chosen: str
    rejected: str
    rejected_judgment: str


# A programmatic rewrite: x' for (pair, candidate number), or None when it cannot write one. The
# verifiable rewriter (shared/evaluation/iopo_rewrite.py) builds x' from a prompt's IFEval
# metadata; the core only needs this call.
Rewriter = Callable[[PairForGroup, int], "str | None"]


@dataclass
class GroupResult:
    """The verified groups, as the records the ``iopo_groups`` stage writes, and why the others failed."""

    groups: list[IopoGroupRow] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


# Why a candidate x' fails, from the earliest step to the latest. A pair none of whose candidates
# verifies is counted under the reason of the candidate that got furthest.
DROP_REASONS = (
    "no_verifiable_rewrite",
    "unparsable",
    "not_a_rewrite",
    "unchanged",
    "undecided",
    "rejected_fails_new_prompt",
    "chosen_passes_new_prompt",
)


_PLACEHOLDER = "complete new prompt"  # from REWRITE_TEMPLATE's answer format
_WORDS = re.compile(r"[a-z0-9]+")


def task_overlap(x: str, x2: str) -> float:
    """Share of x's distinct words that x' keeps (x' should be x with some constraints changed)."""
    words = set(_WORDS.findall(x.lower()))
    return len(words & set(_WORDS.findall(x2.lower()))) / len(words) if words else 1.0


def is_a_rewrite(x: str, x2: str, min_task_overlap: float) -> bool:
    """False for the template's placeholder echoed back, or for text that drops most of the task."""
    if _PLACEHOLDER in " ".join(_WORDS.findall(x2.lower())):
        return False
    return task_overlap(x, x2) >= min_task_overlap


def rewrite_request(
    pair: PairForGroup, max_new_tokens: int, temperature: float, seed: int, candidate: int, attempt: int
) -> GenerationRequest:
    content = REWRITE_TEMPLATE.format(
        prompt=pair.prompt, response=pair.rejected, judgment=pair.rejected_judgment
    )
    return GenerationRequest(
        messages=[{"role": "user", "content": content}],
        n=1,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=derive_seed(seed, "iopo-rewrite", pair.key, candidate, attempt),
    )


def build_groups(
    pairs: Sequence[PairForGroup],
    engine: Engine,
    judge: Judges,
    seed: int,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    parse_retries: int = 3,
    rewrites: int = 1,
    rewriter: Rewriter | None = None,
    llm_fallback: bool = True,
    min_task_overlap: float = 0.5,
) -> GroupResult:
    """Rewrite, verify and count: at most one group per pair.

    Each pair gets ``rewrites`` candidate instructions x' (independently sampled, so a refiner that
    often misjudges which constraint to change still yields groups); the first candidate that
    verifies is kept. A ``rewriter`` writes x' without the engine where it can (prompts with
    checkable constraints); the refiner rewrites the rest unless ``llm_fallback`` is off, in which
    case they are dropped as ``no_verifiable_rewrite``. A reply that echoes the template's
    placeholder or keeps less than ``min_task_overlap`` of x's words is ``not_a_rewrite``: a weak
    refiner (SmolLM2-135M) writes such replies, and a weak judge then "verifies" them. ``judge``
    must judge what the rewriter wrote (the stage's judge knows the new prompts' metadata). Counts
    are per pair: ``attempted``, ``verified`` and ``dropped_<reason>`` (see DROP_REASONS), plus
    ``candidates`` and ``candidates_verified`` (and ``candidates_programmatic`` when there is a rewriter).
    """
    if rewrites < 1:
        raise ValueError("rewrites must be >= 1")
    result = GroupResult()
    result.counts["attempted"] = len(pairs)
    slots = [(i, c) for i in range(len(pairs)) for c in range(rewrites)]
    result.counts["candidates"] = len(slots)
    rewritten: dict[tuple[int, int], str] = {}
    reached: dict[tuple[int, int], str] = {}  # furthest step each candidate reached
    missing = []
    for slot in slots:
        text = rewriter(pairs[slot[0]], slot[1]) if rewriter is not None else None
        if text is not None:
            rewritten[slot] = text
        elif llm_fallback:
            missing.append(slot)
        else:
            reached[slot] = "no_verifiable_rewrite"
    programmatic = set(rewritten)
    if rewriter is not None:
        result.counts["candidates_programmatic"] = len(programmatic)
    for attempt in range(parse_retries + 1):
        if not missing:
            break
        outputs = engine.generate(
            [rewrite_request(pairs[i], max_new_tokens, temperature, seed, c, attempt) for i, c in missing]
        )
        still = []
        for slot, (text,) in zip(missing, outputs, strict=True):
            new_prompt = extract_refined(text)
            if new_prompt is None:
                still.append(slot)
            else:
                rewritten[slot] = new_prompt
        missing = still

    reached.update(dict.fromkeys(missing, "unparsable"))
    candidates = []
    for slot, new_prompt in sorted(rewritten.items()):
        if new_prompt.strip() == pairs[slot[0]].prompt.strip():
            reached[slot] = "unchanged"
        elif not is_a_rewrite(pairs[slot[0]].prompt, new_prompt, min_task_overlap):
            reached[slot] = "not_a_rewrite"
        else:
            candidates.append((slot, new_prompt))
    n = len(candidates)
    items = [(x2, pairs[i].rejected) for (i, _), x2 in candidates]
    items += [(x2, pairs[i].chosen) for (i, _), x2 in candidates]
    judgments = judge.judge(items) if items else []
    for k, (slot, _) in enumerate(candidates):
        neg_under_x2, refined_under_x2 = judgments[k], judgments[n + k]
        if not (neg_under_x2.decided and refined_under_x2.decided):
            reached[slot] = "undecided"
        elif neg_under_x2.label is not Verdict.PASS:
            reached[slot] = "rejected_fails_new_prompt"
        elif refined_under_x2.label is not Verdict.FAIL:
            reached[slot] = "chosen_passes_new_prompt"
        else:
            reached[slot] = "verified"

    new_prompts = dict(candidates)
    rank = {reason: r for r, reason in enumerate((*DROP_REASONS, "verified"))}
    for i, pair in enumerate(pairs):
        outcomes = [reached[(i, c)] for c in range(rewrites)]
        result.counts["candidates_verified"] += outcomes.count("verified")
        if "verified" in outcomes:
            slot = (i, outcomes.index("verified"))
            result.groups.append(
                IopoGroupRow(
                    key=pair.key,
                    x1=pair.prompt,
                    y1=pair.chosen,
                    x2=new_prompts[slot],
                    y2=pair.rejected,
                    x2_source="verifier" if slot in programmatic else "refiner",
                )
            )
        else:
            result.counts[f"dropped_{max(outcomes, key=rank.__getitem__)}"] += 1
    result.counts["verified"] = len(result.groups)
    return result
