"""Answers that end in a loop: a small model repeating one span until the token limit cuts it.

Issue #21 asks for the share of completions cut at ``max_new_tokens`` and for limits sized so it
stays under 5%. A raised limit helps an answer that was still saying something; it does not help
one that repeats the same span verbatim, which would run into any limit. :func:`ends_in_loop` tells
the two apart, so the report can say how many of the cut answers more tokens would not have ended.

The test is on the text's tail, in whitespace-separated tokens compared exactly (punctuation and
case kept): the last :data:`TAIL_TOKENS` tokens equal themselves shifted by some period of at most
:data:`MAX_PERIOD` tokens, at :data:`AGREEMENT` of the positions (a loop may drift by a word now and
then; a span repeated with only a counter changing, "Section 1 ... Section 2 ...", counts once the
span is longer than ten tokens). It finds verbatim loops only: a model that paraphrases itself
endlessly is not counted, so the share it gives is a lower bound.
"""

from __future__ import annotations

from collections.abc import Iterable

TAIL_TOKENS = 60
"""How many trailing tokens must repeat: enough that a list of short items is not a loop by chance."""

MAX_PERIOD = 30
"""The longest repeated span looked for, in tokens (at most half the tail, so it repeats twice)."""

AGREEMENT = 0.9
"""The share of tail positions that must equal the token one period later."""


def ends_in_loop(
    text: str, tail_tokens: int = TAIL_TOKENS, max_period: int = MAX_PERIOD, agreement: float = AGREEMENT
) -> bool:
    """Whether ``text``'s last ``tail_tokens`` tokens repeat a span of at most ``max_period`` tokens.

    A text shorter than ``tail_tokens`` tokens is never a loop (it ended on its own)."""
    if not 0 < max_period <= tail_tokens // 2:
        raise ValueError(
            f"max_period must be between 1 and tail_tokens // 2 ({tail_tokens // 2}), got {max_period}"
        )
    tokens = text.split()
    if len(tokens) < tail_tokens:
        return False
    tail = tokens[-tail_tokens:]
    for period in range(1, max_period + 1):
        compared = tail_tokens - period
        same = sum(tail[i] == tail[i + period] for i in range(compared))
        if same >= agreement * compared:
            return True
    return False


def count_loops(texts: Iterable[str]) -> tuple[int, int]:
    """(texts that end in a loop, texts) over ``texts``."""
    loops = total = 0
    for text in texts:
        total += 1
        loops += ends_in_loop(text)
    return loops, total
