"""Bootstrap intervals over prompts (shared/bootstrap.py)."""

from __future__ import annotations

import pytest

from shared.bootstrap import bootstrap_interval, ratio


def test_the_interval_contains_the_estimate_and_narrows_with_more_prompts() -> None:
    small = [(1, 1)] * 3 + [(0, 1)] * 7
    large = small * 40
    lo_s, hi_s = bootstrap_interval(small, seed=1)
    lo_l, hi_l = bootstrap_interval(large, seed=1)
    assert ratio(small) == pytest.approx(0.3) and lo_s <= 0.3 <= hi_s
    assert lo_l <= 0.3 <= hi_l and (hi_l - lo_l) < (hi_s - lo_s) / 3


def test_all_or_nothing_has_no_width_and_the_seed_reproduces() -> None:
    assert bootstrap_interval([(2, 2)] * 20) == (1.0, 1.0)
    units = [(1, 3), (2, 2), (0, 4), (3, 5)]
    assert bootstrap_interval(units, seed=7) == bootstrap_interval(units, seed=7)


def test_instruction_level_resamples_prompts_as_units() -> None:
    # one prompt with many instructions dominates the ratio; resampling keeps its instructions together
    units = [(10, 10), (0, 1), (0, 1), (0, 1)]
    assert ratio(units) == pytest.approx(10 / 13)
    lo, hi = bootstrap_interval(units, samples=2000, seed=0)
    assert lo == 0.0 and hi > 0.9  # the estimate 0.77 is far from settled with four prompts


def test_pointwise_judge_scores_treat_each_output_on_its_own() -> None:
    from shared.evaluation.judge_eval import pointwise_scores

    # 10 pairs: 8 preferred pass, 6 others fail, 3 others pass (1 undecided)
    s = pointwise_scores(preferred_pass=8, other_fail=6, other_pass=3, n=10)
    assert s["pointwise_accuracy"] == pytest.approx(14 / 20)
    assert s["pointwise_precision"] == pytest.approx(8 / 11) and s["pointwise_recall"] == pytest.approx(0.8)
    assert s["pointwise_f1"] == pytest.approx(2 * (8 / 11) * 0.8 / (8 / 11 + 0.8))
    assert pointwise_scores(0, 10, 0, 10)["pointwise_f1"] == 0.0  # a judge that says No to everything
