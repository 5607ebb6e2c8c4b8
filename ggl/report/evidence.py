"""Defence effect separated from search noise: each victim's score averaged over its search seeds, CIs that
resample victims within federation seeds (the seeds' spread beside them), the worst case over a fixed number
of attackers (chosen on one search seed, scored on another), the best-of-k control (k runs of one attacker)
and each attacker's paired difference against no defence. Pure functions of the records, as ``points``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ggl.core.stats import MeanCI, stratified_mean_ci
from ggl.report.points import BOOTSTRAP_SEED, SCORE, SELECT, Point, fixed_portfolio, victim_key

Victim = tuple               # (federation seed, round, victim index, image): the same victim in every setting
CONTROL = "ggl-l2"           # the attacker of the best-of-k control and of the first threat model
REFERENCE = "fp32"           # the defence every other is compared with


def victim(rec) -> Victim:
    seed, rnd, _capture, image, index = victim_key(rec)
    return seed, rnd, index, image


def runs(point: Point, key: str) -> Dict[Victim, Dict[int, float]]:
    """{victim: {search seed index: score}} of a point's finite scores."""
    out: Dict[Victim, Dict[int, float]] = {}
    for rec, _ in point.pairs:
        v = rec.metric(key)
        if v is not None and math.isfinite(float(v)):
            out.setdefault(victim(rec), {})[int(rec.search.get("index") or 0)] = float(v)
    return out


def per_victim(point: Point, key: str) -> Dict[Victim, float]:
    """Each victim's score averaged over its search seeds: what one run of the attacker gets, in expectation."""
    return {v: sum(r.values()) / len(r) for v, r in runs(point, key).items()}


def search_noise(point: Point, key: str) -> Optional[float]:
    """Mean over victims of |run 0 - run 1|: how far two searches of the same victim land apart."""
    gaps = [abs(r[0] - r[1]) for r in runs(point, key).values() if 0 in r and 1 in r]
    return sum(gaps) / len(gaps) if gaps else None


def _strata(values: Dict[Victim, float]) -> Dict[object, np.ndarray]:
    out: Dict[object, List[float]] = {}
    for v, x in values.items():
        out.setdefault(v[0], []).append(x)
    return {s: np.asarray(xs, dtype=np.float64) for s, xs in out.items()}


def stratified_ci(values: Dict[Victim, float], seed: int = BOOTSTRAP_SEED) -> Optional[MeanCI]:
    """Mean over victims with a 95% CI that resamples victims within each federation seed."""
    return stratified_mean_ci(list(_strata(values).values()), seed=seed)


def seed_spread(values: Dict[Victim, float]) -> Optional[Tuple[float, float]]:
    """(lowest, highest) mean of one federation seed's victims; None with fewer than two seeds."""
    means = [float(x.mean()) for x in _strata(values).values()]
    return (min(means), max(means)) if len(means) > 1 else None


@dataclass(frozen=True)
class Diff:
    """``a - b`` on the victims both have."""
    ci: MeanCI                                # mean difference and its stratified CI
    p_value: float                            # two-sided Wilcoxon signed-rank
    spread: Optional[Tuple[float, float]]     # the federation seeds' mean differences


def paired_diff(a: Dict[Victim, float], b: Dict[Victim, float]) -> Optional[Diff]:
    common = {v: a[v] - b[v] for v in a if v in b}
    if not common:
        return None
    from scipy.stats import wilcoxon

    d = np.asarray(list(common.values()))
    p = 1.0 if np.all(d == 0) or len(d) < 2 else float(wilcoxon(d).pvalue)
    return Diff(stratified_ci(common), p, seed_spread(common))


# ---------------------------------------------------------------------------------------------
# the worst case over a fixed number of attackers, and the best-of-k control


@dataclass(frozen=True)
class FixedWorst:
    attackers: Tuple[str, ...]                # chosen on search seed SELECT (highest mean first)
    values: Dict[Victim, float]               # per victim, the best of their search seed SCORE runs


def scored(point: Point, key: str) -> bool:
    return any(SELECT in r and SCORE in r for r in runs(point, key).values())


def fixed_worst_case(members: Sequence[Point], key: str, k: int) -> Optional[FixedWorst]:
    """The ``k`` attackers the report's worst case takes (``points.fixed_portfolio``: the highest mean PSNR
    on search seed 0), each victim's best of their seed-1 runs on ``key``: every setting's worst case is a
    maximum over k runs, and choosing the attackers does not also pick their lucky runs."""
    chosen = fixed_portfolio(members, k)
    if chosen is None:
        return None
    by = {p.key.attacker: runs(p, key) for p in members if p.key.attacker in chosen}
    victims = set.intersection(*({v for v, r in by[a].items() if SCORE in r} for a in chosen))
    return FixedWorst(chosen, {v: max(by[a][v][SCORE] for a in chosen) for v in victims})


def best_of_runs(point: Point, key: str, k: int) -> Dict[Victim, float]:
    """Per victim, the best of one attacker's first ``k`` search seeds (victims with fewer are left out)."""
    return {v: max(r[i] for i in range(k)) for v, r in runs(point, key).items() if all(i in r for i in range(k))}


def single_run(point: Point, key: str, index: int = SCORE) -> Dict[Victim, float]:
    return {v: r[index] for v, r in runs(point, key).items() if index in r}
