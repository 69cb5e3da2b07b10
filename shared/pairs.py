"""Stage 4: the training data an iteration produces.

- DPO pairs for the actor: chosen = a tree's successful refinement, rejected = the tree's ROOT
  negative (not the successful node's parent): the pair contrasts what the actor said with what it
  should have said.
- RFT examples for the refiner, in five parts with caps (the reference recipe's mix):
  ``refinement`` (parent chat -> the successful child's full refiner output), ``tree_pass`` /
  ``tree_fail`` (judgments of non-unanimous tree nodes, at most one of each per tree), and
  ``stage2_pass`` / ``stage2_fail`` (judgments of sampled responses whose vote had a dissent).
  Examples are de-duplicated by their first user message, always, across the whole mix (a refinement
  example already teaches the judgment that opens it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .config import CapsConfig
from .judging import Judgment
from .records import AssembleCounts, ChatTurn, NodeRow, PairRow, RftExample, SearchedTree
from .seeding import rng_for, text_key
from .templates import judge_messages, refine_conversation
from .verdict import Verdict

RFT_PARTS: tuple[str, ...] = ("refinement", "tree_pass", "tree_fail", "stage2_fail", "stage2_pass")
_Item = TypeVar("_Item", PairRow, RftExample)


@dataclass(frozen=True)
class JudgedResponse:
    """A stage-2 response and its judgment, as the assembly needs it."""

    prompt_id: str
    prompt: str
    response: str
    judgment: Judgment


def dpo_pair(prompt_id: str, tree: SearchedTree) -> PairRow | None:
    """The (chosen, rejected) pair of a successful tree; None when the tree found no success."""
    success = tree.success
    if success is None:
        return None
    return PairRow(
        prompt_id=prompt_id,
        tree=tree.key,
        prompt=tree.prompt,
        chosen=success.response,
        rejected=tree.root.response,
        rejected_judgment=tree.root.judgment,
        chosen_value=success.value,
        depth=success.depth,
    )


def sample_pairs(stage2: Sequence[JudgedResponse], seed: int) -> list[PairRow]:
    """The ablation's pairs: per prompt, a passing sample (chosen) against a failing one (rejected).

    No refinement: both responses are the actor's own independent samples, judged in stage 2. The
    choice among a prompt's passing and failing samples is seeded; prompts lacking either give none.
    """
    by_prompt: dict[str, list[JudgedResponse]] = {}
    for r in stage2:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    pairs = []
    for prompt_id, responses in by_prompt.items():
        passed = [r for r in responses if r.judgment.label is Verdict.PASS]
        failed = [r for r in responses if r.judgment.label is Verdict.FAIL]
        if not passed or not failed:
            continue
        rng = rng_for(seed, "sample-pairs", prompt_id)
        chosen, rejected = rng.choice(passed), rng.choice(failed)
        pairs.append(
            PairRow(
                prompt_id=prompt_id,
                tree=f"{prompt_id}#samples",
                prompt=chosen.prompt,
                chosen=chosen.response,
                rejected=rejected.response,
                rejected_judgment=rejected.judgment.kept or "",
                chosen_value=chosen.judgment.value or 0.0,
                depth=0,
            )
        )
    return pairs


def refinement_example(prompt_id: str, tree: SearchedTree) -> RftExample | None:
    """Parent's refine chat -> the successful child's whole output (reflection and markers)."""
    success = tree.success
    if success is None or success.parent is None or success.raw is None:
        return None
    parent = tree.nodes[success.parent]
    messages = refine_conversation(tree.prompt, parent.response, parent.judgment)
    messages.append({"role": "assistant", "content": success.raw})
    return _example("refinement", prompt_id, tree.key, messages)


def tree_judgment_examples(prompt_id: str, tree: SearchedTree, seed: int) -> list[RftExample]:
    """At most one passing and one failing judgment per tree, from non-unanimous children.

    Eligible nodes have 0 < V < 1 and V != 0.5 (the root's vote belongs to stage 2). Which eligible
    node is used is a seeded random choice.
    """
    out = []
    for part, passing in (("tree_pass", True), ("tree_fail", False)):
        eligible = [
            n for n in tree.nodes[1:] if 0.0 < n.value < 1.0 and n.value != 0.5 and (n.value > 0.5) == passing
        ]
        if eligible:
            node = rng_for(seed, part, tree.key).choice(eligible)
            out.append(_judgment_example(part, prompt_id, tree.key, tree.prompt, node))
    return out


def stage2_judgment_examples(responses: Iterable[JudgedResponse]) -> list[RftExample]:
    """Judgments of stage-2 responses whose vote was decided with a dissent."""
    out = []
    for r in responses:
        j = r.judgment
        if not j.vote.dissent or j.kept is None:
            continue
        part = "stage2_pass" if j.label is Verdict.PASS else "stage2_fail"
        messages = judge_messages(r.prompt, r.response)
        messages.append({"role": "assistant", "content": j.kept})
        out.append(_example(part, r.prompt_id, None, messages))
    return out


@dataclass
class Assembled:
    """What stage 4 writes, plus the counts the run summary shows."""

    pairs: list[PairRow] = field(default_factory=list)
    rft: list[RftExample] = field(default_factory=list)
    counts: AssembleCounts = field(default_factory=AssembleCounts)


def assemble(
    trees: Sequence[tuple[str, SearchedTree]],
    stage2: Sequence[JudgedResponse],
    caps: CapsConfig,
    seed: int,
    max_pairs: int | None = None,
    pairs_from: str = "refinement",
) -> Assembled:
    """DPO pairs and the capped, de-duplicated RFT mix from an iteration's trees and judgments.

    ``trees`` holds (prompt id, tree). Capping takes a seeded random subset, then restores the
    input order, so the output does not depend on how the work was sharded.
    """
    counts: dict[str, int] = {}

    pairs: list[PairRow] = []
    seen_pairs: set[str] = set()
    candidates_pairs = (
        [dpo_pair(prompt_id, tree) for prompt_id, tree in trees]
        if pairs_from == "refinement"
        else list(sample_pairs(stage2, seed))
    )
    for pair in candidates_pairs:
        if pair is None:
            continue
        key = text_key(pair.prompt, pair.chosen, pair.rejected)
        if key not in seen_pairs:
            seen_pairs.add(key)
            pairs.append(pair)
    counts["pairs_unique"] = len(pairs)
    if max_pairs is not None:
        pairs = _capped(pairs, max_pairs, seed, "pairs")
    counts["pairs"] = len(pairs)

    candidates: dict[str, list[RftExample]] = {part: [] for part in RFT_PARTS}
    for prompt_id, tree in trees:
        example = refinement_example(prompt_id, tree)
        if example is not None:
            candidates["refinement"].append(example)
        for example in tree_judgment_examples(prompt_id, tree, seed):
            candidates[example.part].append(example)
    for example in stage2_judgment_examples(stage2):
        candidates[example.part].append(example)

    seen_first_user: set[str] = set()
    rft: list[RftExample] = []
    for part in RFT_PARTS:
        unique = []
        for example in candidates[part]:
            first_user = _first_user(example)
            if first_user in seen_first_user:
                continue
            seen_first_user.add(first_user)
            unique.append(example)
        counts[f"rft_{part}_candidates"] = len(candidates[part])
        kept = _capped(unique, getattr(caps, part), seed, part)
        counts[f"rft_{part}"] = len(kept)
        rft.extend(kept)
    counts["rft"] = len(rft)
    return Assembled(pairs=pairs, rft=rft, counts=AssembleCounts(**counts))


def _capped(items: list[_Item], cap: int, seed: int, part: str) -> list[_Item]:
    if len(items) <= cap:
        return items
    chosen = sorted(rng_for(seed, "cap", part).sample(range(len(items)), cap))
    return [items[i] for i in chosen]


def _first_user(example: RftExample) -> str:
    return next(m.content for m in example.messages if m.role == "user")


def _judgment_example(part: str, prompt_id: str, tree_key: str, prompt: str, node: NodeRow) -> RftExample:
    messages = judge_messages(prompt, node.response)
    messages.append({"role": "assistant", "content": node.judgment})
    return _example(part, prompt_id, tree_key, messages)


def _example(part: str, prompt_id: str, tree_key: str | None, messages: list[dict[str, str]]) -> RftExample:
    return RftExample(
        kind="refinement" if part == "refinement" else "judgment",
        part=part,  # type: ignore[arg-type]
        prompt_id=prompt_id,
        tree=tree_key,
        messages=[ChatTurn(**m) for m in messages],  # type: ignore[arg-type]
    )
