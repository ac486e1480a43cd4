"""Paired comparison statistics: McNemar/Newcombe, paired bootstrap, over-seed t intervals."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from sequencematch.evaluation.paired import (
    PairedDifference,
    bootstrap_difference,
    bootstrap_indices,
    mcnemar,
    paired_bootstrap,
    seed_difference,
    verdict,
)


def _outcomes(n: int, p: float, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < p for _ in range(n)]


def test_mcnemar_identical_methods_show_no_difference():
    a = _outcomes(200, 0.5, 0)
    result = mcnemar(a, list(a))
    assert result.difference == 0.0 and result.p_value == 1.0
    assert result.low <= 0.0 <= result.high
    assert verdict(result) == "no significant difference"


def test_mcnemar_p_value_is_the_exact_binomial_test_on_discordant_pairs():
    a = [True] * 30 + [False] * 12 + [True] * 5 + [False] * 53
    b = [True] * 30 + [True] * 12 + [False] * 5 + [False] * 53
    result = mcnemar(a, b)
    assert result.difference == pytest.approx((12 - 5) / 100)
    assert result.p_value == pytest.approx(stats.binomtest(12, 17, 0.5).pvalue)


def test_mcnemar_interval_is_antisymmetric_and_detects_a_clear_win():
    a = _outcomes(400, 0.4, 1)
    b = [x or random.Random(i).random() < 0.3 for i, x in enumerate(a)]  # b fixes some of a's
    forward, backward = mcnemar(a, b), mcnemar(b, a)
    assert forward.difference == pytest.approx(-backward.difference)
    assert forward.low == pytest.approx(-backward.high)
    assert forward.high == pytest.approx(-backward.low)
    assert forward.low > 0 and verdict(forward) == "better" and verdict(backward) == "worse"
    assert forward.p_value < 1e-6


def test_paired_interval_is_narrower_than_ignoring_the_pairing():
    # both methods fail the same hard items: the pairing removes that shared variance
    a = _outcomes(300, 0.5, 2)
    b = list(a)
    for i in range(0, 300, 25):
        b[i] = True
    paired = mcnemar(a, b)
    diff = paired.difference
    se_unpaired = math.sqrt(2 * 0.5 * 0.5 / 300)
    assert paired.high - paired.low < 2 * 1.96 * se_unpaired
    assert paired.low <= diff <= paired.high


def test_paired_bootstrap_is_seeded_and_brackets_the_observed_difference():
    rng = random.Random(3)
    a = [rng.gauss(0.0, 1.0) for _ in range(200)]
    b = [x + 0.3 + rng.gauss(0.0, 0.1) for x in a]
    first = paired_bootstrap(a, b, resamples=500, seed=7)
    again = paired_bootstrap(a, b, resamples=500, seed=7)
    assert first == again
    assert first.low <= first.difference <= first.high
    assert first.difference == pytest.approx(sum(b) / 200 - sum(a) / 200)
    assert first.low > 0.25 and verdict(first) == "better"


def test_paired_bootstrap_takes_any_statistic():
    a = [0.0] * 50 + [1.0] * 50
    b = [1.0] * 100
    result = paired_bootstrap(a, b, statistic=lambda values: float(max(values)), resamples=200)
    assert result.difference == 0.0


def test_shared_resamples_give_the_paired_bootstrap():
    # a statistic computed once per method and resample (e.g. MAUVE) and then paired
    rng = random.Random(4)
    a = [rng.random() for _ in range(80)]
    b = [x + rng.gauss(0.05, 0.1) for x in a]
    picks = bootstrap_indices(80, 300, seed=9)
    assert picks.shape == (300, 80) and (bootstrap_indices(80, 300, seed=9) == picks).all()
    a_means = [sum(a[i] for i in pick) / 80 for pick in picks]
    b_means = [sum(b[i] for i in pick) / 80 for pick in picks]
    shared = bootstrap_difference(sum(b) / 80 - sum(a) / 80, a_means, b_means, 80)
    direct = paired_bootstrap(a, b, resamples=300, seed=9)
    assert shared.low == pytest.approx(direct.low) and shared.high == pytest.approx(direct.high)
    assert shared.p_value == pytest.approx(direct.p_value)


def test_resamples_where_a_statistic_is_undefined_are_left_out():
    nan = math.nan
    result = bootstrap_difference(0.1, [0.0, nan, 0.0, 0.0], [0.1, 0.2, nan, 0.1], 4)
    assert result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)
    empty = bootstrap_difference(0.1, [nan, 0.0], [0.1, nan], 2)
    assert math.isnan(empty.low) and empty.p_value is None


def test_a_difference_survives_the_json_round_trip():
    result = mcnemar(_outcomes(50, 0.5, 5), _outcomes(50, 0.6, 6))
    assert PairedDifference.from_dict(result.as_dict()) == result


def test_seed_difference_is_the_student_t_interval_of_the_mean():
    values = [0.05, -0.01, 0.03, 0.02, 0.04]
    result = seed_difference(values)
    mean = sum(values) / 5
    sd = stats.tstd(values)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert result.difference == pytest.approx(mean)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half))
    assert result.p_value == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)


def test_one_seed_has_no_interval_and_claims_nothing():
    result = seed_difference([0.2])
    assert math.isnan(result.low) and result.p_value is None
    assert verdict(result).startswith("no significant difference")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar([True], [True, False])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="confidence"):
        mcnemar([True], [False], confidence=1.5)


def test_two_seeds_or_identical_differences_make_no_claim_over_seeds():
    # two equal per-seed differences: a zero-width interval that is no evidence
    equal = seed_difference([0.01, 0.01])
    assert equal.low == equal.high == pytest.approx(0.01)
    assert verdict(equal).startswith("no significant difference")
    # two clearly positive, different ones: still too few seeds to claim anything
    two = seed_difference([0.30, 0.31])
    assert two.low > 0 and verdict(two).startswith("no significant difference (2 seeds")
    # three seeds with a spread: a claim is made
    three = seed_difference([0.30, 0.31, 0.29])
    assert verdict(three) == "better"
    # three identical ones: no spread to judge
    assert "no spread" in verdict(seed_difference([0.02, 0.02, 0.02]))
