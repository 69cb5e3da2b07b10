"""Majority vote: ties are dropped, never guessed; the kept judgment agrees with the majority."""

import random

import pytest

from shared.negatives import select_negatives
from shared.verdict import Verdict
from shared.voting import majority_vote

P, F, X = Verdict.PASS, Verdict.FAIL, Verdict.INVALID


def test_strict_majority_decides_and_invalid_votes_are_ignored() -> None:
    vote = majority_vote([P, F, P, X, X], random.Random(0))
    assert vote.label is P
    assert (vote.n_pass, vote.n_fail, vote.n_invalid) == (2, 1, 2)
    assert vote.value == pytest.approx(2 / 3)
    assert vote.dissent


@pytest.mark.parametrize("labels", [[P, F], [P, F, X], [X, X, X], [], [P, P, F, F, X]])
def test_a_tie_including_all_invalid_is_undecided(labels) -> None:
    vote = majority_vote(labels, random.Random(0))
    assert vote.label is None and not vote.decided
    assert vote.kept_index is None
    assert not vote.dissent


def test_all_invalid_has_no_value() -> None:
    assert majority_vote([X, X], random.Random(0)).value is None


def test_unanimous_vote_has_no_dissent() -> None:
    vote = majority_vote([F, F, X], random.Random(0))
    assert vote.label is F and vote.value == 0.0 and not vote.dissent


def test_kept_judgment_always_agrees_with_majority_and_is_a_seeded_random_choice() -> None:
    labels = [F, P, F, X, F]
    kept = {majority_vote(labels, random.Random(seed)).kept_index for seed in range(50)}
    assert kept == {0, 2, 4}  # every agreeing judgment can be kept, no other
    assert (
        majority_vote(labels, random.Random(7)).kept_index
        == majority_vote(labels, random.Random(7)).kept_index
    )


def test_one_negative_per_prompt_by_default_chosen_by_seed() -> None:
    failed = [1, 3, 4]
    chosen = {tuple(select_negatives(failed, 1, random.Random(s))) for s in range(40)}
    assert chosen == {(1,), (3,), (4,)}
    assert select_negatives(failed, 1, random.Random(3)) == select_negatives(failed, 1, random.Random(3))


def test_all_negatives_and_counts_larger_than_available() -> None:
    assert select_negatives([0, 2], "all", random.Random(0)) == [0, 2]
    assert select_negatives([0, 2], 5, random.Random(0)) == [0, 2]
    assert select_negatives([], 1, random.Random(0)) == []
    two = select_negatives([0, 1, 2, 3], 2, random.Random(1))
    assert len(two) == 2 and two == sorted(two)
