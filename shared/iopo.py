"""IOPO groups from self-play (the product's extension, LOSSES.md).

A successful tree gives (x, y_neg, y_refined) and the judgment j of y_neg, which lists the
constraints y_neg violates. The refiner rewrites the instruction into x' -- x with those constraints
changed so that y_neg now follows it and y_refined no longer does. Both facts are verified by
judging (majority vote) under x'; a verified group is (x1, y1, x2, y2) = (x, y_refined, x', y_neg).
Every step is batched across all pairs: one rewrite call (plus retries for unparsable replies) and
one judging call (plus tie rounds), whatever the number of pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .engine import Engine, GenerationRequest
from .judging import Judge
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


@dataclass
class GroupResult:
    groups: list[dict[str, object]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def rewrite_request(pair: PairForGroup, max_new_tokens: int, temperature: float, seed: int, attempt: int):
    content = REWRITE_TEMPLATE.format(
        prompt=pair.prompt, response=pair.rejected, judgment=pair.rejected_judgment
    )
    return GenerationRequest(
        messages=[{"role": "user", "content": content}],
        n=1,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=derive_seed(seed, "iopo-rewrite", pair.key, attempt),
    )


def build_groups(
    pairs: Sequence[PairForGroup],
    engine: Engine,
    judge: Judge,
    seed: int,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    parse_retries: int = 3,
) -> GroupResult:
    """Rewrite, verify and count. Dropped reasons: unparsable, unchanged, rejected_fails_new_prompt,
    chosen_passes_new_prompt, undecided."""
    result = GroupResult()
    result.counts["attempted"] = len(pairs)
    rewritten: dict[int, str] = {}
    missing = list(range(len(pairs)))
    for attempt in range(parse_retries + 1):
        if not missing:
            break
        outputs = engine.generate(
            [rewrite_request(pairs[i], max_new_tokens, temperature, seed, attempt) for i in missing]
        )
        still = []
        for i, (text,) in zip(missing, outputs, strict=True):
            new_prompt = extract_refined(text)
            if new_prompt is None:
                still.append(i)
            else:
                rewritten[i] = new_prompt
        missing = still
    result.counts["dropped_unparsable"] = len(missing)

    candidates = []
    for i, new_prompt in sorted(rewritten.items()):
        if new_prompt.strip() == pairs[i].prompt.strip():
            result.counts["dropped_unchanged"] += 1
        else:
            candidates.append((pairs[i], new_prompt))
    items = [(x2, p.rejected) for p, x2 in candidates] + [(x2, p.chosen) for p, x2 in candidates]
    judgments = judge.judge(items) if items else []
    n = len(candidates)
    for k, (pair, x2) in enumerate(candidates):
        neg_under_x2, refined_under_x2 = judgments[k], judgments[n + k]
        if not (neg_under_x2.decided and refined_under_x2.decided):
            result.counts["dropped_undecided"] += 1
        elif neg_under_x2.label is not Verdict.PASS:
            result.counts["dropped_rejected_fails_new_prompt"] += 1
        elif refined_under_x2.label is not Verdict.FAIL:
            result.counts["dropped_chosen_passes_new_prompt"] += 1
        else:
            result.groups.append(
                {"key": pair.key, "x1": pair.prompt, "y1": pair.chosen, "x2": x2, "y2": pair.rejected}
            )
    result.counts["verified"] = len(result.groups)
    return result
