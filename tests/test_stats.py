"""Intervals and verdicts on constructed numbers where the answer is known (diffscape.core.stats).

Each simulated run's number = the setting's value + seed-to-seed variation (sd ``seed_sd``) +
sampling noise of the run's finite image sets (variance ``w``, which the run reports as its
within-run variance, as KID's subset std or FID's bootstrap do).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffscape.core import stats
from diffscape.core.stats import BETTER, NO_DIFFERENCE, NO_INTERVAL, WORSE, compare, estimate

TRIALS = 2000


def verdicts(shift: float, seed_sd: float, w: float, k: int, seed: int = 0) -> list[str]:
    """``TRIALS`` comparisons of an arm ``shift`` above the baseline (higher is better)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(TRIALS):
        runs = rng.normal(0, seed_sd, (2, k)) + rng.normal(0, math.sqrt(w), (2, k))
        base = estimate(list(runs[0]), [w] * k)
        arm = estimate(list(runs[1] + shift), [w] * k)
        out.append(compare(arm, base, higher_is_better=True).verdict)
    return out


def rate(found: list[str], verdict: str) -> float:
    return found.count(verdict) / len(found)


@pytest.mark.parametrize(
    ("k", "seed_sd"),
    [(3, 0.0), (3, 1.0), (3, 3.0), (5, 1.0), (1, 0.0)],
    # from pure sampling noise to seeds dominating; k = 1 only where seeds do not vary (one
    # seed cannot see seed-to-seed variation: see test_one_seed_falls_back_to_within_run_noise)
)
def test_equal_settings_give_no_difference_in_95_percent(k, seed_sd):
    found = verdicts(0.0, seed_sd, w=1.0, k=k, seed=k * 10 + int(seed_sd))
    assert rate(found, NO_DIFFERENCE) >= 0.95, rate(found, NO_DIFFERENCE)
    assert abs(rate(found, BETTER) - rate(found, WORSE)) < 0.03  # symmetric


@pytest.mark.parametrize("seed_sd", [0.0, 1.0, 3.0])
def test_a_shift_of_3_sd_is_found(seed_sd):
    """sd = the sd of one run's number (seed variation and sampling noise together), the spread
    a user sees between seeds. Three seeds a side find a 3 sd shift in about 70 % of trials
    (simulated: 69-75 %); five seeds in 98 %. The sd of the difference of the two means is
    sqrt(2/k) of it: a 3 sd shift of *that* at k = 3 is found about 55 % of the time and ~80 %
    needs about 4 (t with few degrees of freedom costs power)."""
    w = 1.0
    sd = math.sqrt(seed_sd**2 + w)
    three = verdicts(3 * sd, seed_sd, w, k=3, seed=1)
    assert rate(three, BETTER) >= 0.62, rate(three, BETTER)
    assert rate(three, WORSE) == 0.0
    five = verdicts(3 * sd, seed_sd, w, k=5, seed=2)
    assert rate(five, BETTER) >= 0.95, rate(five, BETTER)
    diff_sd = sd * math.sqrt(2 / 3)
    assert rate(verdicts(3 * diff_sd, seed_sd, w, k=3, seed=3), BETTER) >= 0.45
    assert rate(verdicts(4 * diff_sd, seed_sd, w, k=3, seed=4), BETTER) >= 0.70
    # lower is better (FID): the same shift up is "worse"
    arm, base = estimate([10.0, 10.2, 9.9]), estimate([5.0, 5.1, 4.8])
    assert compare(arm, base, higher_is_better=False).verdict == WORSE


def test_one_seed_falls_back_to_within_run_noise():
    """k = 1: the interval is the run's own sampling noise (normal), nothing from seeds."""
    e = estimate([0.6], [0.0004])  # e.g. an accuracy of 0.6 over 600 images: sd 0.02
    assert e.k == 1 and e.between is None and e.var == pytest.approx(0.0004)
    assert math.isinf(e.df)
    assert (e.low, e.high) == pytest.approx((0.6 - 1.96 * 0.02, 0.6 + 1.96 * 0.02), abs=1e-4)
    # a shift of 3 sd of the difference is found ~85 % of the time when only sampling varies
    found = verdicts(3 * math.sqrt(2), 0.0, w=1.0, k=1, seed=5)
    assert rate(found, BETTER) >= 0.8
    # no within-run noise either (FID without bootstrap, one seed): no interval, no verdict
    lone = estimate([12.0])
    assert lone.var is None and lone.low is None
    assert compare(lone, estimate([11.0]), higher_is_better=False).verdict == NO_INTERVAL


def test_the_larger_of_between_and_within_is_used():
    quiet = estimate([1.0, 1.01, 0.99], [0.25, 0.25, 0.25])  # seeds agree more than the noise
    assert quiet.var == pytest.approx(0.25 / 3) and math.isinf(quiet.df)
    loud = estimate([1.0, 3.0, 5.0], [0.01, 0.01, 0.01])
    assert loud.var == pytest.approx(4.0 / 3) and loud.df == 2
    assert loud.high - loud.mean == pytest.approx(4.302653 * math.sqrt(4 / 3), rel=1e-5)
    partial = estimate([1.0, 3.0], [0.01, None])  # not every run knows it: seeds alone
    assert partial.within is None and partial.var == pytest.approx(1.0)
    assert estimate([None, float("nan")]) is None
    assert compare(None, loud, True) is None


def test_welch_degrees_of_freedom():
    assert stats.welch_df(1.0, 2, 1.0, 2) == pytest.approx(4.0)
    assert stats.welch_df(1.0, math.inf, 1.0, math.inf) == math.inf
    assert stats.welch_df(1.0, 2, 0.0, 2) == pytest.approx(2.0)


def test_within_run_variances_from_records():
    assert stats.binomial_var(0.5, 100) == pytest.approx(0.0025)
    assert stats.binomial_var(1.0, 100) > 0  # a perfect score still has noise
    assert stats.binomial_var(0.5, 0) is None and stats.binomial_var(None, 10) is None
    kid = {"mean": 0.01, "std": 0.002, "subset_size": 125, "subsets": 100}
    assert stats.kid_var(kid, 250) == pytest.approx(0.002**2 / 2)
    assert stats.kid_var(None, 250) is None
    assert stats.fid_var({"fid_bootstrap": {"low": 1, "high": 3, "std": 0.5}}) == 0.25
    assert stats.fid_var({"fid_interval": {"low": 10.0, "high": 13.92, "n_boot": 50}}) is None
    assert stats.fid_var({"fid": 3.0}) is None
