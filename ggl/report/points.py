"""Points of the report: attacked images grouped by (defence, attacker, round, probe, dataset, model), seeds
pooled, with their statistics; the worst case per victim over the attacker portfolio (the only place the
"best per victim" rule lives); paired comparisons on the same victims. Pure functions of the records:
the per-image CSV is enough to recompute every number here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ggl.attack.attackers import attacker_order, compare_with
from ggl.audit.baselines import BASELINES
from ggl.audit.metrics import direction
from ggl.audit.records import ATTACKER_KINDS, FederationResult, ImageRecord
from ggl.audit.reid import HEADLINE, chance
from ggl.core.stats import MeanCI, mean_ci, paired, stratified_mean_ci

Pair = Tuple[ImageRecord, Optional[FederationResult]]
BOOTSTRAP_SEED = 0
WORST_CASE = "best per victim"   # the attacker of a worst-case point
WIN_METRIC = "psnr"              # which attacker "won" a victim (whose reconstruction is shown)
COMPARE_METRICS = (("psnr", "PSNR (dB)"), (HEADLINE, "re-id top-1"))


@dataclass(frozen=True)
class PointKey:
    defense: str
    attacker: str
    round: Optional[int]
    probe: Optional[str]
    dataset: Optional[str]
    model: Optional[str]

    @property
    def setting(self) -> tuple:
        """What a worst case is taken over the attackers of: one defence, round and probe of one dataset/model."""
        return self.defense, self.round, self.probe, self.dataset, self.model


@dataclass(frozen=True)
class FedSummary:
    """The federation numbers of a point (its federations' mean test accuracy; the rest from the first)."""
    test_acc: Optional[float] = None
    round_test_acc: Optional[float] = None
    bits_per_round: Optional[float] = None
    compression_ratio: Optional[float] = None
    epsilon: Optional[Tuple[float, float]] = None   # (epsilon, delta) of a DP federation
    rounds: Optional[int] = None
    faults: int = 0


@dataclass(frozen=True)
class WorstCase:
    attackers: Tuple[str, ...]         # the attackers it is taken over
    wins: Dict[str, int]               # attacker -> victims won on WIN_METRIC, most first
    won_by: Dict[tuple, str]           # victim key -> the attacker that won it


@dataclass(frozen=True, eq=False)
class Point:
    key: PointKey
    pairs: Tuple[Pair, ...]            # the images (records with their federation), in seed/round/capture order
    fed: FedSummary
    seeds: Tuple[int, ...]
    kind: str                          # non-adaptive | adaptive | portfolio (the worst case)
    images: Optional[Path] = None      # the attack's images.pt (None for a worst case: per victim, the winner's)
    worst_case: Optional[WorstCase] = None

    @property
    def n_images(self) -> int:
        """Victims' images (each search seed's run of one image counts once)."""
        return len({victim_key(r) for r, _ in self.pairs})

    @property
    def victims(self) -> frozenset:
        """Which victims (federation seed, victim index) the point attacked, whatever the order and the
        number of search seeds."""
        return frozenset((r.seed, r.victim_index) for r, _ in self.pairs)

    def ci(self, key: str) -> Optional[MeanCI]:
        """Mean and 95% bootstrap CI of a flat metric name over the point's images (``ImageRecord.metric``)."""
        return ci(self.pairs, key)


def values(pairs: Sequence[Pair], key: str) -> List[Optional[float]]:
    return [r.metric(key) for r, _ in pairs]


def ci(pairs: Sequence[Pair], key: str) -> Optional[MeanCI]:
    """Mean and 95% CI over the victims: a victim's search seeds are averaged first (one victim, one value),
    and victims are resampled within their federation seed. One run per victim of one seed: ``mean_ci``."""
    by: Dict[tuple, List[float]] = {}
    for rec, _ in pairs:
        v = rec.metric(key)
        if v is not None and math.isfinite(float(v)):
            by.setdefault(victim_key(rec), []).append(float(v))
    if all(len(xs) == 1 for xs in by.values()) and len({k[0] for k in by}) <= 1:
        return mean_ci(values(pairs, key), seed=BOOTSTRAP_SEED)  # as every report before search seeds
    strata: Dict[object, List[float]] = {}
    for k, xs in by.items():
        strata.setdefault(k[0], []).append(sum(xs) / len(xs))
    return stratified_mean_ci(list(strata.values()), seed=BOOTSTRAP_SEED)


def mean(xs: Iterable[Optional[float]]) -> Optional[float]:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else None


# ---------------------------------------------------------------------------------------------
# building


def _point(key: PointKey, group: List[Pair]) -> Point:
    group = sorted(group, key=lambda p: (p[0].seed if p[0].seed is not None else -1, p[0].round or 0,
                                         p[0].capture_id or "", p[0].image))
    feds = list({f.key: f for _, f in group if f is not None}.values())
    first = feds[0] if feds else None
    fed = FedSummary() if first is None else FedSummary(
        test_acc=mean(f.test_acc for f in feds), bits_per_round=first.bits_per_round,
        round_test_acc=mean(f.accuracy_at(key.round) for f in feds) if key.round is not None else None,
        compression_ratio=first.compression_ratio, rounds=first.rounds, faults=sum(f.faults for f in feds),
        epsilon=(first.epsilon, first.delta) if first.epsilon is not None else None)
    return Point(key=key, pairs=tuple(group), fed=fed, seeds=tuple(sorted({r.seed for r, _ in group
                                                                           if r.seed is not None})),
                 kind=ATTACKER_KINDS[group[0][0].adaptive],
                 images=next((Path(r.images) for r, _ in group if r.images), None))


def build_points(pairs: Sequence[Pair]) -> List[Point]:
    """Group images into points (seeds pooled) and add the worst case over the attackers per (defence,
    round, probe, dataset, model), in table order: dataset, best test accuracy first, defence, probe,
    round, attacker."""
    groups: Dict[PointKey, List[Pair]] = {}
    for rec, fed in pairs:
        key = PointKey(rec.defense, rec.attacker, rec.round, rec.probe, fed.dataset if fed else None,
                       fed.model if fed else None)
        groups.setdefault(key, []).append((rec, fed))
    points = [_point(key, group) for key, group in groups.items()]
    attackers = attacker_order()
    return sorted(points + worst_case_points(points), key=lambda p: _order(p, attackers))


def measured_pairs(points: Sequence[Point]) -> List[Pair]:
    """The attacked images of the points (not the worst cases' combined records): what the CSV holds."""
    return [p for point in points if point.worst_case is None for p in point.pairs]


def _attacker_rank(name: str, order: Sequence[str]) -> tuple:
    """Table order: the worst case, the attackers in the registry's order (``register(order=...)``), then
    names no attacker is registered as (an older run's), alphabetically."""
    if name == WORST_CASE:
        return -1, ""
    return (order.index(name), "") if name in order else (len(order), name)


def _order(p: Point, attackers: Sequence[str]) -> tuple:
    acc = p.fed.test_acc
    return (p.key.dataset or "", -(acc if acc is not None else -1.0), p.key.defense, p.key.probe or "",
            p.key.round if p.key.round is not None else -1, _attacker_rank(p.key.attacker, attackers))


# ---------------------------------------------------------------------------------------------
# the worst case: per victim, the best any attacker did


def _better(metric: Optional[str], a: Optional[float], b: Optional[float]) -> bool:
    """Is score ``a`` more leakage than ``b`` on ``metric`` (None and non-finite never are)? ``metric``
    None: a leakage value, which is higher-is-more-leakage for every metric already."""
    if a is None or not math.isfinite(a):
        return False
    if b is None or not math.isfinite(b):
        return True
    sign = (direction(metric) or 1) if metric is not None else 1
    return sign * a > sign * b


def _best(metric: Optional[str], scores) -> Optional[float]:
    best = None
    for v in scores:
        if _better(metric, v, best):
            best = v
    return best


def victim_key(rec: ImageRecord) -> tuple:
    return rec.seed, rec.round, rec.capture_id, rec.image, rec.victim_index


def best_record(records: Sequence[ImageRecord]) -> Tuple[ImageRecord, str]:
    """One victim's records (one per attacker) -> (a record holding the best score of any attacker on
    every metric and leakage, the attacker that won on PSNR; ties go to the first attacker by name, so the
    runs and their CSV, read in other orders, name the same winner)."""
    ordered = sorted(records, key=lambda r: r.attacker or "")
    winner = ordered[0]
    for r in ordered[1:]:
        if _better(WIN_METRIC, r.metrics.get(WIN_METRIC), winner.metrics.get(WIN_METRIC)):
            winner = r
    metrics = {key: next((r.metrics[key] for r in records if r.metrics.get(key) is not None), None)
               if key.startswith("reid_gallery")  # gallery sizes: the same for every attacker
               else _best(key, (r.metrics.get(key) for r in records))
               for key in dict.fromkeys(k for r in records for k in r.metrics)}
    leakage = {key: _best(None, (r.leakage.get(key) for r in records))
               for key in dict.fromkeys(k for r in records for k in r.leakage)}
    rec = dataclasses.replace(winner, setting=f"{winner.defense}@{WORST_CASE}", attacker=WORST_CASE,
                              metrics=metrics, leakage=leakage)
    return rec, winner.attacker


SELECT, SCORE = 0, 1  # with search seeds, a worst case picks its attackers on seed 0 and scores their seed-1 runs


def search_index(rec: ImageRecord) -> int:
    return int(rec.search.get("index") or 0)


def _seeded(p: Point) -> bool:
    """Did this attacker run search seeds SELECT and SCORE on some victim?"""
    seen: Dict[tuple, set] = {}
    for rec, _ in p.pairs:
        seen.setdefault(victim_key(rec), set()).add(search_index(rec))
    return any({SELECT, SCORE} <= s for s in seen.values())


def portfolio_size(groups: Iterable[Sequence[Point]]) -> int:
    """k: the fewest attackers with two search seeds that any (defence, round, ...) ran; 0 if none did."""
    counts = [n for n in (sum(_seeded(p) for p in g) for g in groups) if n]
    return min(counts) if counts else 0


def fixed_portfolio(members: Sequence[Point], k: int, metric: str = WIN_METRIC) -> Optional[Tuple[str, ...]]:
    """The ``k`` attackers with the highest mean ``metric`` on search seed SELECT (ties by name), or None."""
    eligible = [p for p in members if _seeded(p)]
    if k < 1 or len(eligible) < k:
        return None

    def select_mean(p: Point) -> float:
        xs = [float(r.metrics[metric]) for r, _ in p.pairs if search_index(r) == SELECT
              and r.metrics.get(metric) is not None and math.isfinite(float(r.metrics[metric]))]
        return sum(xs) / len(xs) if xs else -math.inf

    return tuple(p.key.attacker for p in sorted(eligible, key=lambda p: (-select_mean(p), p.key.attacker))[:k])


def worst_case_points(points: List[Point]) -> List[Point]:
    """One worst-case point per (defence, round, probe, dataset, model) that ran two or more attackers: per
    victim, the best of its attackers' records. With search seeds, of a fixed number k of attackers (the
    fewest any setting ran), chosen on search seed 0 and scored on their seed-1 runs, so that every setting's
    worst case is a maximum over k runs; without, of every attacker (the earlier reports' rule)."""
    groups: Dict[tuple, List[Point]] = {}
    for p in points:
        groups.setdefault(p.key.setting, []).append(p)
    k = portfolio_size(groups.values())
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        chosen = fixed_portfolio(members, k)
        by_victim: Dict[tuple, List[Pair]] = {}
        for p in members:
            if chosen is not None and p.key.attacker not in chosen:
                continue
            for rec, fed in p.pairs:
                if chosen is None or search_index(rec) == SCORE:
                    by_victim.setdefault(victim_key(rec), []).append((rec, fed))
        pairs, won_by, wins = [], {}, {}
        for vk, entries in by_victim.items():
            rec, winner = best_record([r for r, _ in entries])
            pairs.append((rec, next((f for _, f in entries if f is not None), None)))
            won_by[vk] = winner
            wins[winner] = wins.get(winner, 0) + 1
        first = members[0]
        case = WorstCase(attackers=chosen or tuple(p.key.attacker for p in members), won_by=won_by,
                         wins=dict(sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))))
        out.append(dataclasses.replace(first, key=dataclasses.replace(first.key, attacker=WORST_CASE),
                                       pairs=tuple(pairs), kind="portfolio", images=None, worst_case=case))
    return out


def worst_cases(points: Sequence[Point]) -> List[Point]:
    """Per (defence, round, probe, dataset, model): its worst-case point where several attackers ran,
    else its one attacker's point, in table order."""
    derived = {p.key.setting for p in points if p.worst_case is not None}
    return [p for p in points if p.worst_case is not None or p.key.setting not in derived]


def wins_text(point: Point) -> str:
    """'ggl-l2-adaptive 20, ggl-eot 12' (victims won on PSNR)."""
    wins = point.worst_case.wins if point.worst_case else {}
    return ", ".join(f"{k} {v}" for k, v in wins.items()) or "–"


def contrast(points: Sequence[Point], p: Point) -> Optional[Point]:
    """The non-adaptive L2 GGL point of ``p``'s setting, round and probe (the attacker of earlier reports)."""
    return next((o for o in points if o.worst_case is None and o.key.attacker == "ggl-l2"
                 and o.key.setting == p.key.setting), None)


# ---------------------------------------------------------------------------------------------
# baselines, chance and paired comparisons


def strongest_baseline(pairs: Sequence[Pair], metric: str) -> Optional[str]:
    """The label-only baseline with the best mean ``metric`` over these images."""
    means = {b: mean(r.baselines.get(b, {}).get(metric) for r, _ in pairs) for b in BASELINES}
    means = {b: m for b, m in means.items() if m is not None}
    if not means:
        return None
    sign = direction(metric) or 1
    return max(means, key=lambda b: sign * means[b])


def chance_level(pairs: Sequence[Pair], kind: str = "top1", gallery: str = "class") -> Optional[float]:
    return mean(chance(kind, r.metrics[f"reid_gallery_{gallery}"]) for r, _ in pairs
                if r.metrics.get(f"reid_gallery_{gallery}") is not None)


def _aligned(a: Sequence[Pair], b: Sequence[Pair], key_a: str, key_b: str) -> Tuple[List[float], List[float]]:
    """Values of two image sets on their common victims (seed, round, victim index, image)."""
    def index(pairs):
        return {(r.seed, r.round, r.victim_index, r.image): r for r, _ in pairs if r.victim_index is not None}

    ia, ib = index(a), index(b)
    common = [k for k in ia if k in ib]
    va = [ia[k].metric(key_a) for k in common]
    vb = [ib[k].metric(key_b) for k in common]
    keep = [i for i in range(len(common)) if va[i] is not None and vb[i] is not None]
    return [float(va[i]) for i in keep], [float(vb[i]) for i in keep]


def label(p: Point) -> str:
    rnd = f" round {p.key.round}" if p.key.round is not None else ""
    return f"{p.key.defense}{rnd} {p.key.attacker}"


def _paired(name: str, a: Point, b: Point, baseline: bool = False) -> list:
    out = []
    for key, metric in COMPARE_METRICS:
        res = paired(*_aligned(a.pairs, b.pairs, key, f"best_baseline_{key}" if baseline else key),
                     seed=BOOTSTRAP_SEED)
        if res is not None:
            out.append((name, metric, res))
    return out


def comparisons(points: List[Point]) -> list:
    """(comparison, metric label, ggl.core.stats.Paired) on the same victims: each setting's worst case (or
    its one attacker) against the best label-only baseline (does it leak?); each defence's worst case
    against no defence's at the same round (does the defence reduce leakage?); each attacker that models
    the defence against the first that ran of those it adds to (``register(compare_with=...)`` in
    ``ggl.attack.attackers``; the expectation attacker of a randomised defence is ggl-l2: E[q(u)] = u)."""
    out = []
    heads = worst_cases(points)
    for p in heads:
        out += _paired(f"{label(p)} − best label-only baseline", p, p, baseline=True)
    ref = {(p.key.round, p.key.probe, p.key.dataset): p for p in heads if p.key.defense == "fp32"}
    for p in heads:
        other = ref.get((p.key.round, p.key.probe, p.key.dataset))
        if other is not None and other is not p:
            rnd = "–" if p.key.round is None else str(p.key.round)
            out += _paired(f"{label(p)} − fp32 {other.key.attacker} (round {rnd})", p, other)
    by_key = {(p.key.defense, p.key.attacker, p.key.round, p.key.probe, p.key.dataset): p for p in points
              if p.worst_case is None}
    several_rounds = len({p.key.round for p in points}) > 1
    for p in points:
        if p.worst_case is not None or not compare_with(p.key.attacker):
            continue
        for base in compare_with(p.key.attacker):
            other = by_key.get((p.key.defense, base, p.key.round, p.key.probe, p.key.dataset))
            if other is not None:
                break
        else:
            continue
        name = (f"{p.key.defense}: adaptive − non-adaptive" if p.key.attacker == "ggl-l2-adaptive"
                else f"{p.key.defense}: {p.key.attacker} − {base}")
        name += f" (round {p.key.round})" if several_rounds else ""
        out += _paired(name, p, other)
    return out
