"""IOPO's x' written by program for prompts whose constraints a checker can verify.

An IOPO group needs x' such that the negative y_neg follows it and the refined y_ref does not
(docs/objectives.md). When x carries IFEval metadata (``instruction_id_list`` + ``kwargs``, as
``spar prompts synth`` writes it), the checker says exactly which constraints y_neg violates, and
the instruction registry can write a different version of each. So, without asking the refiner:

1. every constraint y_neg follows is kept as is;
2. every constraint it violates is re-drawn -- same instruction type, new arguments -- until y_neg
   follows the new version, preferring a version y_ref violates (``at least 80 words`` becomes
   ``less than 40 words`` for a 30-word negative and a 90-word refinement); a type with nothing to
   re-draw (``no_comma``) is removed;
3. if y_ref still follows everything, one more constraint is added that y_neg follows and y_ref
   does not, from the types compatible with the kept ones (a word only y_ref uses becomes a
   forbidden keyword, a count between the two becomes a limit, ...);
4. x' is x with those descriptions swapped, removed or appended, and its metadata is the new list.

Arguments come from grids over each type's thresholds and from the two responses' own words
(which make keyword constraints that separate them), then from the synth samplers; the checker is
the only judge of which argument separates the two responses, so nothing here re-implements its
counting. The result is checked with the checker before it is returned (y_neg passes every constraint of x',
y_ref fails at least one), its metadata is recorded so the stage's verifier judges it, and no x'
may equal or contain an IFEval evaluation prompt. Candidates differ by their seed. Where x has no
metadata, its descriptions cannot be found in its text (a hand-written prompt), or it repeats
itself (``combination:repeat_prompt``), the rewriter returns None and the refiner rewrites instead.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from shared.iopo import PairForGroup
from shared.seeding import derive_seed

from ..judges.verifier import check_response, ifeval_metadata
from .synth import (
    SAMPLERS,
    as_sentence,
    build_description,
    collides_with_ifeval,
    conflicts,
    instruction_types,
)

UNREWRITABLE = frozenset({"combination:repeat_prompt"})


@dataclass(frozen=True)
class Constraint:
    instruction_id: str
    kwargs: dict[str, Any]
    description: str  # as it appears in the prompt text


def _constraint(instruction_id: str, kwargs: dict[str, Any]) -> Constraint | None:
    try:
        return Constraint(instruction_id, kwargs, as_sentence(build_description(instruction_id, kwargs)))
    except (ValueError, TypeError, KeyError):  # arguments the registry would replace, or reject
        return None


def _follows(prompt: str, response: str, c: Constraint) -> bool:
    meta = {"instruction_id_list": [c.instruction_id], "kwargs": [c.kwargs]}
    return check_response(prompt, response, meta)[0]


class _OutOfChecks(Exception):
    """The candidate used up its checker budget."""


class VerifiableRewriter:
    """``rewriter(pair, candidate) -> x' | None`` for :func:`shared.iopo.build_groups`.

    ``metadata_by_prompt`` maps prompt text to its metadata; every x' written is added to it, so a
    judge that looks metadata up there (the stage's) verifies x' with the checker.
    """

    def __init__(
        self,
        metadata_by_prompt: MutableMapping[str, Any],
        seed: int,
        tries: int = 48,
        max_checks: int = 800,
    ):
        self.metadata_by_prompt = metadata_by_prompt
        self.seed = seed
        self.tries = tries
        self.max_checks = max_checks  # checker calls per candidate: bounds the cost of a hopeless pair
        self._checks = 0

    def _follows(self, prompt: str, response: str, c: Constraint) -> bool:
        self._checks += 1
        if self._checks > self.max_checks:
            raise _OutOfChecks
        return _follows(prompt, response, c)

    def __call__(self, pair: PairForGroup, candidate: int) -> str | None:
        self._checks = 0
        try:
            return self._rewrite(pair, candidate)
        except _OutOfChecks:
            return None

    def _rewrite(self, pair: PairForGroup, candidate: int) -> str | None:
        meta = ifeval_metadata(self.metadata_by_prompt.get(pair.prompt))
        if meta is None or UNREWRITABLE & set(meta["instruction_id_list"]):
            return None
        original = [
            _constraint(i, k) for i, k in zip(meta["instruction_id_list"], meta["kwargs"], strict=True)
        ]
        if any(c is None or c.description not in pair.prompt for c in original):
            return None  # not composed from the registry's descriptions: leave it to the refiner
        rng = random.Random(derive_seed(self.seed, "iopo-verifiable", pair.key, candidate))
        x, neg, ref = pair.prompt, pair.rejected, pair.chosen
        words = Words.of(neg, ref)
        text = x
        kept: list[Constraint] = []
        for c in original:
            assert c is not None
            if self._follows(x, neg, c):
                kept.append(c)
                continue
            variant = self._variant(c.instruction_id, x, neg, ref, words, rng)
            if variant is None:
                text = _remove(text, c.description)
            else:
                text = text.replace(c.description, variant.description, 1)
                kept.append(variant)
        if all(self._follows(text, ref, c) for c in kept):
            added = self._addition(kept, text, neg, ref, words, rng)
            if added is None:
                return None
            text = f"{text.rstrip()} {added.description}"
            kept.append(added)
        new_meta = {
            "instruction_id_list": [c.instruction_id for c in kept],
            "kwargs": [c.kwargs for c in kept],
        }
        # The whole x' through the checker, as the judge will see it.
        if text.strip() == x.strip() or not all(check_response(text, neg, new_meta)):
            return None
        if all(check_response(text, ref, new_meta)) or collides_with_ifeval(text):
            return None
        self.metadata_by_prompt[text] = new_meta
        return text

    def _variant(
        self, instruction_id: str, x: str, neg: str, ref: str, words: Words, rng: random.Random
    ) -> Constraint | None:
        """A re-drawn version of one violated constraint that ``neg`` follows; one that ``ref``
        violates if there is one among the tries."""
        fallback = None
        for kwargs in _arguments(instruction_id, words, rng, self.tries):
            c = _constraint(instruction_id, kwargs)
            if c is None or not self._follows(x, neg, c):
                continue
            if not self._follows(x, ref, c):
                return c
            fallback = fallback or c
        return fallback

    def _addition(
        self, kept: list[Constraint], x: str, neg: str, ref: str, words: Words, rng: random.Random
    ) -> Constraint | None:
        """A new constraint, compatible with the kept ones, that ``neg`` follows and ``ref`` does not."""
        table = conflicts()
        types = [
            t
            for t in instruction_types()
            if t not in UNREWRITABLE and not any(t in table[c.instruction_id] for c in kept)
        ]
        rng.shuffle(types)
        for instruction_id in types:
            for kwargs in _arguments(instruction_id, words, rng, self.tries):
                c = _constraint(instruction_id, kwargs)
                if c is None or c.description in x:
                    continue
                if self._follows(x, neg, c) and not self._follows(x, ref, c):
                    return c
        return None


RELATIONS = ("less than", "at least")
WORD_COUNTS = (5, 10, 15, 20, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500)
_WORD = re.compile(r"[a-z]{4,}")


def _vocabulary(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class Words:
    """Words one response uses and the other does not (and a few both use), at most 12 of each,
    sorted: the keyword arguments that can separate the two. Computed once per candidate."""

    only_neg: tuple[str, ...]
    only_ref: tuple[str, ...]
    both: tuple[str, ...]

    @classmethod
    def of(cls, neg: str, ref: str) -> Words:
        a, b = _vocabulary(neg), _vocabulary(ref)
        return cls(tuple(sorted(a - b)[:12]), tuple(sorted(b - a)[:12]), tuple(sorted(a & b)[:6]))


# Arguments worth trying per type: thresholds across the usual range, and separating words.
_GRIDS: dict[str, Callable[[Words], list[dict[str, Any]]]] = {
    "length_constraints:number_words": lambda w: [
        {"num_words": n, "relation": r} for r in RELATIONS for n in WORD_COUNTS
    ],
    "length_constraints:number_sentences": lambda w: [
        {"num_sentences": n, "relation": r} for r in RELATIONS for n in range(1, 13)
    ],
    "length_constraints:number_paragraphs": lambda w: [{"num_paragraphs": n} for n in range(1, 7)],
    "keywords:existence": lambda w: [{"keywords": [word]} for word in w.only_neg],
    "keywords:forbidden_words": lambda w: [{"forbidden_words": [word]} for word in w.only_ref],
    "keywords:frequency": lambda w: [
        {"keyword": word, "frequency": n, "relation": r}
        for word in w.only_neg + w.only_ref + w.both
        for r in RELATIONS
        for n in (1, 2, 3, 4)
    ],
    "keywords:letter_frequency": lambda w: [
        {"letter": letter, "let_frequency": n, "let_relation": r}
        for letter in "aeinorstz"
        for r in RELATIONS
        for n in (1, 2, 3, 5, 8, 12, 20, 30)
    ],
    "change_case:capital_word_frequency": lambda w: [
        {"capital_frequency": n, "capital_relation": r} for r in RELATIONS for n in range(1, 11)
    ],
    "detectable_content:number_placeholders": lambda w: [{"num_placeholders": n} for n in range(1, 6)],
    "detectable_format:number_highlighted_sections": lambda w: [{"num_highlights": n} for n in range(1, 6)],
    "detectable_format:number_bullet_lists": lambda w: [{"num_bullets": n} for n in range(1, 9)],
}


def _arguments(instruction_id: str, words: Words, rng: random.Random, draws: int) -> list[dict[str, Any]]:
    """The type's grid in a seeded order (so candidates differ), then ``draws`` samples from the
    synth sampler (types without a grid: languages, end phrases, ...), duplicates dropped."""
    grid = _GRIDS[instruction_id](words) if instruction_id in _GRIDS else []
    rng.shuffle(grid)
    out, seen = [], set()
    for kwargs in grid + [SAMPLERS[instruction_id](rng, set()) for _ in range(draws)]:
        key = repr(sorted(kwargs.items()))
        if key not in seen:
            seen.add(key)
            out.append(kwargs)
    return out


def _remove(text: str, description: str) -> str:
    """``text`` without one constraint's description (and the space that joined it)."""
    for variant in (f" {description}", f"{description} ", description):
        if variant in text:
            return text.replace(variant, "", 1)
    return text
