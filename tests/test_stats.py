"""ggl.core.stats: the bootstrap CI has its coverage; the paired comparison matches a hand computation."""
from __future__ import annotations

import numpy as np
import pytest

from ggl.core.stats import mean_ci, paired, rank_sums


def test_bootstrap_ci_covers_the_true_mean_in_at_least_90_percent_of_200_draws():
    rng = np.random.default_rng(2024)
    true_mean = 3.0
    covered = 0
    for i in range(200):
        x = rng.normal(true_mean, 2.0, size=24)  # a known distribution, n like a small sweep point
        ci = mean_ci(x, seed=i)
        assert ci.low <= ci.mean <= ci.high and ci.n == 24
        covered += ci.low <= true_mean <= ci.high
    assert covered >= 180, covered


def test_mean_ci_skips_missing_values_and_degenerates_to_the_mean():
    ci = mean_ci([1.0, None, float("nan"), 3.0], seed=0)
    assert ci.n == 2 and ci.mean == 2.0
    assert mean_ci([5.0, 5.0, 5.0]).low == mean_ci([5.0, 5.0, 5.0]).high == 5.0
    assert mean_ci([7.0]).fmt() == "7.00" and mean_ci([None]) is None


def test_mean_ci_is_deterministic_given_the_seed():
    x = np.random.default_rng(0).exponential(size=16)
    assert mean_ci(x, seed=3) == mean_ci(x, seed=3)


def test_wilcoxon_and_effect_sizes_match_a_hand_computed_case():
    # differences 1, -2, 3, 4, -5, 6: ranks of |d| are 1..6, R+ = 1+3+4+6 = 14, R- = 2+5 = 7.
    # Exact two-sided p: 2 * P(W <= 7) under H0; of the 2^6 = 64 sign patterns, 18 have a rank sum <= 7
    # (sums 0..7 occur 1, 1, 1, 2, 2, 3, 4, 4 times), so p = 36 / 64.
    a = np.array([11.0, 8.0, 13.0, 14.0, 5.0, 16.0])
    b = np.full(6, 10.0)
    res = paired(a, b)
    assert rank_sums(a - b) == (14.0, 7.0)
    assert res.n == 6 and res.wilcoxon_stat == 7.0
    assert res.p_value == pytest.approx(36 / 64, abs=1e-12)
    assert res.mean_diff == pytest.approx(7 / 6)
    d = a - b
    assert res.cohens_dz == pytest.approx((7 / 6) / np.sqrt(((d - 7 / 6) ** 2).sum() / 5))
    assert res.rank_biserial == pytest.approx((14 - 7) / 21)
    assert res.ci.low <= res.mean_diff <= res.ci.high


def test_paired_refuses_unaligned_victims_and_needs_two_pairs():
    with pytest.raises(ValueError, match="not the same victims"):
        paired([1.0, 2.0], [1.0, 2.0, 3.0])
    assert paired([1.0, float("nan")], [0.0, 0.0]) is None
    same = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.p_value == 1.0 and same.cohens_dz is None and same.mean_diff == 0.0
