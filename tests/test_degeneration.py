"""shared.degeneration: which answers end in a verbatim loop (more tokens would not end them)."""

from __future__ import annotations

import pytest

from shared.degeneration import TAIL_TOKENS, count_loops, ends_in_loop

PROSE = (
    "The printing press changed how ideas travelled across Europe. Before it, a scribe copied one "
    "book in months; after it, a workshop printed hundreds in weeks. Prices fell, literacy rose, and "
    "scholars in distant cities could argue over the same page. Religious reformers used pamphlets to "
    "reach townspeople directly, while governments learned to license printers and censor what they "
    "printed. Within a century the machine had spread to every major trading city, carrying news, "
    "maps, music and science further than any courier could."
)


def test_a_repeated_sentence_at_the_end_is_a_loop() -> None:
    looped = "Here is my answer. " + "I love the sea and the sky. " * 20
    assert ends_in_loop(looped)


@pytest.mark.parametrize("period", [1, 2, 7, 30])
def test_every_period_up_to_the_longest_is_found(period: int) -> None:
    span = " ".join(f"w{i}" for i in range(period))
    assert ends_in_loop(" ".join([span] * (2 * TAIL_TOKENS // period + 2)))


def test_a_span_longer_than_the_longest_period_is_not_a_loop() -> None:
    span = " ".join(f"w{i}" for i in range(31))
    assert not ends_in_loop(" ".join([span] * 5))
    assert ends_in_loop(" ".join([span] * 5), tail_tokens=80, max_period=40)


def test_prose_and_numbered_lists_are_not_loops() -> None:
    assert len(PROSE.split()) >= TAIL_TOKENS
    assert not ends_in_loop(PROSE)
    steps = [
        "weigh the flour",
        "warm the water",
        "mix both into a dough",
        "knead it for ten minutes",
        "leave it to rise",
        "shape the loaf",
        "score the top",
        "bake it for forty minutes",
        "let it cool on a rack",
        "slice it",
        "toast a slice",
        "butter it while warm",
    ]
    assert not ends_in_loop(" ".join(f"Step {i}: {step}." for i, step in enumerate(steps * 2, 1)))
    # a short span repeated with only its counter changing is a list (one token in eight differs);
    # a long one is a loop (one in twenty)
    assert not ends_in_loop(" ".join(f"Step {i}: mix the flour and water well." for i in range(1, 20)))
    words = "please read the rules of the game before you start playing with your friends at home"
    assert ends_in_loop(" ".join(f"Section {i}: {words}." for i in range(1, 10)))


def test_a_loop_that_drifts_now_and_then_still_counts_but_a_loop_that_ended_does_not() -> None:
    tokens = ("the cat sat on the mat . " * 20).split()
    tokens[-20] = "rug"  # one word in 60 differs
    assert ends_in_loop(" ".join(tokens))
    # a loop in the middle that the answer left: its tail is prose
    assert not ends_in_loop("the cat sat on the mat . " * 20 + PROSE)


def test_a_short_answer_is_never_a_loop() -> None:
    assert not ends_in_loop("yes " * (TAIL_TOKENS - 1))
    assert ends_in_loop("yes " * TAIL_TOKENS)


def test_count_loops_counts_texts() -> None:
    assert count_loops([PROSE, "ha " * 100, "", "no " * 61]) == (2, 4)
    assert count_loops([]) == (0, 0)


def test_a_period_that_cannot_repeat_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="max_period"):
        ends_in_loop(PROSE, tail_tokens=60, max_period=31)
    with pytest.raises(ValueError, match="max_period"):
        ends_in_loop(PROSE, max_period=0)
