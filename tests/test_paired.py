"""Paired statistics of two versions on the same prompts: bootstrap of the difference, exact McNemar."""

import math

import pytest

from shared.paired import binomial_two_sided, mcnemar_exact, paired_bootstrap


def test_identical_versions_differ_by_exactly_zero() -> None:
    units = [(1, 1), (0, 1), (1, 1), (0, 1)] * 25
    d = paired_bootstrap(units, units, samples=200)
    assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0) and not d.excludes_zero


def test_pairing_detects_a_small_consistent_gain_that_separate_intervals_would_not() -> None:
    # 541 prompts, v0 passes 20%; the new version passes the same prompts plus 20 more (+3.7 points)
    before = [(1, 1)] * 108 + [(0, 1)] * 433
    after = [(1, 1)] * 128 + [(0, 1)] * 413
    d = paired_bootstrap(before, after, samples=1000)
    assert d.difference == pytest.approx(20 / 541)
    assert d.excludes_zero and d.low > 0.02  # every discordant prompt goes one way: tight interval
    m = mcnemar_exact([b == (1, 1) for b in before], [a == (1, 1) for a in after])
    assert (m.gained, m.lost) == (20, 0) and m.p_value == pytest.approx(2 / 2**20)


def test_a_reshuffle_with_no_net_change_is_not_significant() -> None:
    before = [True] * 50 + [False] * 50
    after = [False] * 10 + [True] * 40 + [True] * 10 + [False] * 40  # 10 lost, 10 gained
    m = mcnemar_exact(before, after)
    assert (m.gained, m.lost) == (10, 10) and m.p_value == 1.0
    d = paired_bootstrap([(int(b), 1) for b in before], [(int(a), 1) for a in after], samples=500)
    assert d.difference == 0.0 and d.low < 0 < d.high


def test_binomial_two_sided_matches_hand_values() -> None:
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(1, 6) == pytest.approx(2 * (1 + 6) / 64)
    assert binomial_two_sided(3, 6) == 1.0
    assert binomial_two_sided(9, 10) == pytest.approx(2 * (1 + 10) / 1024)
    assert math.isclose(binomial_two_sided(2, 10), binomial_two_sided(8, 10))


def test_instruction_level_units_are_resampled_by_prompt() -> None:
    before = [(1, 3), (0, 2), (2, 2)]
    after = [(3, 3), (0, 2), (2, 2)]
    d = paired_bootstrap(before, after, samples=300)
    assert d.before == pytest.approx(3 / 7) and d.after == pytest.approx(5 / 7)
    assert d.low >= 0 and d.high <= 2 / 3 + 1e-9  # a resample can hold prompt 1 at most all 3 times


def test_misaligned_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap([(1, 1)], [])
    with pytest.raises(ValueError, match="align"):
        mcnemar_exact([True], [True, False])
