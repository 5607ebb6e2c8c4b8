"""Statistics every reported number carries: the mean with a 95% bootstrap CI over victims, and paired
comparisons of two settings on the same victims.

* ``mean_ci``: scipy.stats.bootstrap (BCa, seeded) of the mean. The unit of resampling is one attacked
  image; with several sweep seeds each (seed, victim) pair is one unit, pooled.
* ``paired``: two settings scored on the same victims (aligned arrays): the Wilcoxon signed-rank test
  (scipy.stats.wilcoxon, two-sided), a paired-bootstrap CI of the mean difference, and two effect sizes:
  Cohen's d_z (mean difference / std of the differences) and the matched-pairs rank-biserial
  correlation (the Wilcoxon statistic as a share in [-1, 1]).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 4999


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ".2f") -> str:
        """``12.34 [11.02, 13.50]``; a single value has no interval."""
        if self.n < 2:
            return format(self.mean, spec)
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _clean(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)


def mean_ci(values: Sequence[Optional[float]], seed: int = 0, level: float = LEVEL,
            resamples: int = RESAMPLES) -> Optional[MeanCI]:
    """Mean and ``level`` bootstrap CI of the finite values (None and NaN/inf are left out); None when
    there are none. With one value, or all values equal, the interval is the mean itself."""
    x = _clean(values)
    if x.size == 0:
        return None
    m = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return MeanCI(m, m, m, int(x.size))
    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # BCa warns on (near-)degenerate resamples; percentile is the fallback
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples, method="BCa",
                        rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            res = bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile",
                            rng=np.random.default_rng(seed))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return MeanCI(m, lo, hi, int(x.size))


def stratified_mean_ci(strata: Sequence[Sequence[float]], seed: int = 0, level: float = LEVEL,
                       resamples: int = RESAMPLES) -> Optional[MeanCI]:
    """Mean of every value and a ``level`` percentile bootstrap CI that resamples values within each stratum
    (victims within a federation seed), so the strata keep their sizes; one stratum: ``mean_ci``."""
    groups = [_clean(g) for g in strata]
    groups = [g for g in groups if g.size]
    if len(groups) <= 1:
        return mean_ci(groups[0] if groups else [], seed=seed, level=level, resamples=resamples)
    rng = np.random.default_rng(seed)
    n = sum(g.size for g in groups)
    total = np.zeros(resamples)
    for g in groups:
        total += g[rng.integers(0, g.size, (resamples, g.size))].sum(1)
    lo, hi = np.quantile(total / n, [(1 - level) / 2, (1 + level) / 2])
    return MeanCI(float(sum(g.sum() for g in groups) / n), float(lo), float(hi), int(n))


@dataclass(frozen=True)
class Paired:
    """``a - b`` on the same victims."""
    n: int
    mean_diff: float
    ci: MeanCI                 # paired-bootstrap CI of the mean difference
    wilcoxon_stat: float       # scipy's statistic: the smaller of the positive and negative rank sums
    p_value: float             # two-sided Wilcoxon signed-rank
    cohens_dz: Optional[float]  # mean difference / std (ddof 1) of the differences; None if they are all equal
    rank_biserial: float       # (R+ - R-) / (R+ + R-), zero differences dropped


def rank_sums(diff: Sequence[float]) -> tuple:
    """(R+, R-): the signed-rank sums of the non-zero differences (average ranks for ties)."""
    from scipy.stats import rankdata

    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    ranks = rankdata(np.abs(d))
    return float(ranks[d > 0].sum()), float(ranks[d < 0].sum())


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Optional[Paired]:
    """Compare two settings on the same victims (``a[i]`` and ``b[i]`` are the same image); None when
    fewer than two pairs are complete."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison of {a.shape} and {b.shape} values: not the same victims")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if d.size < 2:
        return None
    from scipy.stats import wilcoxon

    ci = mean_ci(d, seed=seed)
    if np.all(d == 0):
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
    sd = float(d.std(ddof=1))
    r_plus, r_minus = rank_sums(d)
    total = r_plus + r_minus
    return Paired(n=int(d.size), mean_diff=float(d.mean()), ci=ci, wilcoxon_stat=stat, p_value=p,
                  cohens_dz=float(d.mean() / sd) if sd > 0 else None,
                  rank_biserial=(r_plus - r_minus) / total if total else 0.0)


def fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    """A number for a table or a log line; ``none`` where there is no value."""
    return none if v is None else format(v, spec)
