"""Refusing refinements that repair a response by no longer answering the prompt.

A judge that checks only a prompt's verifiable constraints (``judge.backend: verifier``, IFEval's
checker) passes any text that meets them: "less than 9 sentences", "no commas" or "two paragraphs
separated by ***" are met by a line that restates the constraint, or by the refine template's own
placeholder. A small refiner produces exactly such text: in the verifier arm of SmolLM2-135M (issue
#21), 71 of the 75 refinements the checker accepted in two iterations echoed the constraint or the
template ("The complete refined Output."; ``spar report``'s audit table), and DPO on those pairs
taught the actor to answer in a few words, which cost it IFEval points.

SPaR's refinement is a minimal edit of the response it repairs: it keeps what was right and
changes what a constraint requires. :func:`unfaithful_reason` checks the cheap, judge-independent
signs that a refinement is not one, before it is judged:

* it contains the judge's or the refine template's own phrases (a format echo, not an answer);
* it is shorter than ``min_words`` words, or than half the original's words when that is fewer;
* fewer than ``min_overlap`` of its words occur in the response it refines.

A rejected refinement is retried like an unparsable one (``search.parse_retries``) and counted per
tree as ``unfaithful``. The overlap rule also refuses a faithful translation (IFEval's
``language:response_language``): set ``min_overlap`` to 0 for prompts that ask for another language.
"""

from __future__ import annotations

import re

from .config import RefinementGuard
from .templates import END_MARKER, JUDGE_TEMPLATE, REFINE_INSTRUCTION, START_MARKER

_WORD = re.compile(r"\w+", re.UNICODE)


def _format_phrases() -> tuple[str, ...]:
    """The labels of the judge's and the refine template's answer formats (``Final Refined Output``,
    ``Step-by-step verification`` ...), the markers, and the refine format's placeholder text."""
    labels, placeholders = [], []
    for template in (JUDGE_TEMPLATE, REFINE_INSTRUCTION):
        answer_format = template.split("this format:", 1)[1]
        for line in answer_format.strip().splitlines():
            label = line.split(":", 1)[0].split("(", 1)[0].strip()
            labels.append(label)
            if template is REFINE_INSTRUCTION:  # the judge's "<Yes or No>" is ordinary English
                placeholders += re.findall(r"<([^<>]+)>", line)
    return tuple(p.lower() for p in (*labels, *placeholders, START_MARKER, END_MARKER))


FORMAT_PHRASES = _format_phrases()
"""Lower-cased phrases of the refiner's own answer formats; none belongs in a refined response."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore; any script)."""
    return _WORD.findall(text.lower())


def unfaithful_reason(original: str, refined: str, guard: RefinementGuard) -> str | None:
    """Why ``refined`` is not a refinement of ``original`` (``format_echo``, ``too_short``,
    ``low_overlap``), or None when it may be judged."""
    lowered = refined.lower()
    if guard.reject_format_echo and any(phrase in lowered for phrase in FORMAT_PHRASES):
        return "format_echo"
    new, old = words(refined), words(original)
    if len(new) < min(guard.min_words, len(old) // 2):
        return "too_short"
    if new and guard.min_overlap > 0:
        vocabulary = set(old)
        if sum(w in vocabulary for w in new) / len(new) < guard.min_overlap:
            return "low_overlap"
    return None


AUDIT_SIGNS = ("repetition", "format_fragment")
"""Signs of a degenerate refinement that the guard does not refuse; ``spar report`` counts them
among the accepted refinements (:func:`audit_signs`), so a reader sees what passed the guard."""

REPEATED_WORD_SHARE = 0.25
"""Above this share of a refinement's words taken by one word, it is a loop ("SECTION 1 SECTION 2
SECTION 3 ..."); in English prose the commonest word ("the") takes about 5-7%."""

FORMAT_FRAGMENTS = ("refined output", "[[", "]]", "[end", "end]", "[start", "start]")
"""Pieces of the refine format that the whole-phrase echo check misses ("The comprehensive Refined
Output is ...", a stray "[End]]")."""


def audit_signs(refined: str, min_words: int = 20) -> list[str]:
    """Which of :data:`AUDIT_SIGNS` ``refined`` shows: one word making up more than
    :data:`REPEATED_WORD_SHARE` of its words (at ``min_words`` or more), or a piece of the refine
    format. Report-only: the search does not refuse on these (a stage hash covers what it refuses)."""
    signs = []
    tokens = words(refined)
    if len(tokens) >= max(min_words, 1):
        top = max(tokens.count(w) for w in set(tokens))
        if top / len(tokens) > REPEATED_WORD_SHARE:
            signs.append("repetition")
    lowered = refined.lower()
    if any(fragment in lowered for fragment in FORMAT_FRAGMENTS):
        signs.append("format_fragment")
    return signs
