"""Intervals and verdicts over seed replicates: is a setting's difference from the baseline real?

Pure functions over numbers (numpy/scipy); the report feeds them one number per run and, where
the run knows it, that number's own sampling variance ("within-run": KID's spread over subsets,
FID's bootstrap, a binomial variance for an accuracy over n judged images).

The model. Each run's number is the setting's true value + seed-to-seed variation + sampling
noise of that run's finite image sets. For one setting with k seeds:

- the estimate is the mean over the seeds;
- the variance of that mean is ``max(between, within) / k``, where ``between`` is the sample
  variance of the k numbers (ddof 1) and ``within`` the mean of the runs' own variances;
  degrees of freedom ``k - 1`` when ``between`` is the larger (a t interval), infinite when
  ``within`` is (its variance comes from many subsets / resamples / images: taken as known);
- with k = 1 there is no between-seed variance: the within-run variance alone, a normal
  interval. It says nothing of seed-to-seed variation, which one seed cannot see: a verdict
  from one seed is about this n, not about the setting;
- with no within-run variance (FID without bootstrap, train time) and k >= 2, ``between`` alone;
  with neither (k = 1 and none), no interval and no verdict.

A setting against the baseline: the difference of the means, its variance the sum of both, its
degrees of freedom by Welch-Satterthwaite, a 95 % t interval. The verdict is "better" or "worse"
when the interval excludes 0 (in the metric's good or bad direction), else "no difference found
at this n and these seeds".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
BETTER, WORSE = "better", "worse"
NO_DIFFERENCE = "no difference found at this n and these seeds"
NO_INTERVAL = "no interval: one seed and no within-run noise estimate"


@dataclass(frozen=True)
class Estimate:
    """One setting's number over its seeds: mean and a ``LEVEL`` interval (None: none possible)."""

    mean: float
    k: int  # runs (seeds) it is the mean of
    var: float | None  # variance of the mean; None: unknown
    df: float  # degrees of freedom of ``var`` (math.inf: a normal interval)
    between: float | None  # sample variance over the seeds (k >= 2)
    within: float | None  # mean within-run variance of one run's number

    @property
    def half_width(self) -> float | None:
        return None if self.var is None else critical(self.df) * math.sqrt(self.var)

    @property
    def low(self) -> float | None:
        h = self.half_width
        return None if h is None else self.mean - h

    @property
    def high(self) -> float | None:
        h = self.half_width
        return None if h is None else self.mean + h


@dataclass(frozen=True)
class Comparison:
    """A setting minus the baseline: the difference, its interval and the verdict."""

    diff: float
    low: float | None
    high: float | None
    df: float
    verdict: str  # BETTER, WORSE, NO_DIFFERENCE or NO_INTERVAL


def critical(df: float) -> float:
    """The two-sided t (or normal, df = inf) quantile of ``LEVEL``."""
    q = 0.5 + LEVEL / 2
    return float(sps.norm.ppf(q)) if math.isinf(df) else float(sps.t.ppf(q, df))


def estimate(
    values: Sequence[float | None], within: Sequence[float | None] | None = None
) -> Estimate | None:
    """The mean of the runs' numbers and the variance of that mean (module docstring); None
    when no run has the number. ``within[i]`` is run i's own sampling variance, None if unknown.
    """
    pairs = [
        (float(v), None if within is None else within[i])
        for i, v in enumerate(values)
        if v is not None and math.isfinite(v)
    ]
    if not pairs:
        return None
    x = np.array([v for v, _ in pairs])
    k = len(x)
    known = [w for _, w in pairs if w is not None and math.isfinite(w) and w >= 0]
    # The within-run variance is known only if every run has it; a mean over part of them
    # would stand for runs it was not measured on.
    w = float(np.mean(known)) if len(known) == k else None
    between = float(x.var(ddof=1)) if k >= 2 else None
    # Why the max: the between-seed variance already contains the sampling noise (each run's
    # number is its seed's value plus that noise), but from 3 seeds it is a guess with 2 degrees
    # of freedom that falls far below the noise we measured (from 100 subsets, many resamples
    # or hundreds of images) about a third of the time. The max never claims less spread than
    # the runs themselves showed, nor less than the measured noise; simulated, it keeps the
    # false-finding rate at or under 5 % whatever the share of seed and sampling noise.
    if between is not None and (w is None or between >= w):
        var, df = between / k, float(k - 1)
    elif w is not None:
        var, df = w / k, math.inf
    else:
        var, df = None, math.inf
    return Estimate(float(x.mean()), k, var, df, between, w)


def welch_df(v1: float, df1: float, v2: float, df2: float) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variances with their own df."""
    den = sum(v * v / d for v, d in ((v1, df1), (v2, df2)) if not math.isinf(d) and v > 0)
    total = v1 + v2
    return math.inf if den == 0 else total * total / den


def compare(
    arm: Estimate | None, base: Estimate | None, higher_is_better: bool
) -> Comparison | None:
    """``arm`` minus ``base``, its ``LEVEL`` interval and verdict; None when either is missing."""
    if arm is None or base is None:
        return None
    diff = arm.mean - base.mean
    if arm.var is None or base.var is None:
        return Comparison(diff, None, None, math.inf, NO_INTERVAL)
    var = arm.var + base.var
    df = welch_df(arm.var, arm.df, base.var, base.df)
    half = critical(df) * math.sqrt(var)
    low, high = diff - half, diff + half
    if low > 0 or high < 0:
        up = low > 0
        verdict = BETTER if up == higher_is_better else WORSE
    else:
        verdict = NO_DIFFERENCE
    return Comparison(diff, low, high, df, verdict)


# ---- within-run variances from what a run records ------------------------------------------------


def binomial_var(p: float | None, n: int | None) -> float | None:
    """Variance of a share ``p`` measured on ``n`` independent images: p(1 - p) / n. At p = 0
    or 1 it would claim no noise at all; ``(p n + 1/2) / (n + 1)`` (a Jeffreys-like nudge) is
    used there instead."""
    if p is None or not n or n <= 0:
        return None
    q = (p * n + 0.5) / (n + 1) if p in (0.0, 1.0) else p
    return q * (1 - q) / n


def fid_var(metrics: dict[str, Any]) -> float | None:
    """FID's within-run variance: its bootstrap's std squared (``fid_bootstrap``, which has
    always recorded it beside ``fid_interval``); None without a bootstrap (or of one resample)."""
    boot = metrics.get("fid_bootstrap")
    if isinstance(boot, dict) and isinstance(boot.get("std"), int | float) and boot["std"] > 0:
        return float(boot["std"]) ** 2
    return None


def kid_var(kid: dict[str, Any] | None, n: int | None) -> float | None:
    """KID's within-run variance: the std over subsets is that of a KID on ``subset_size``
    images; the reported mean uses about n of them, and the estimator's variance falls like
    1/size (its leading term), so std^2 * subset_size / n."""
    if not isinstance(kid, dict) or not isinstance(kid.get("std"), int | float):
        return None
    size = kid.get("subset_size")
    scale = size / n if isinstance(size, int) and n and 0 < size <= n else 1.0
    return float(kid["std"]) ** 2 * scale
