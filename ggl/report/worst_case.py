"""A setting's leakage against the attacker portfolio: per victim, the best any attacker did.

The report's points are (defence, attacker, round, probe); ``worst_case_points`` adds one point per
(defence, round, probe) that ran two or more attackers, whose image records are, per victim, the best
score of any attacker on each metric (highest PSNR / SSIM / re-identification, lowest LPIPS / MSE) and
the best leakage over the label-only baselines. The attacker that won each victim on PSNR is recorded
(``won_by``) and is whose reconstruction the figure shows. Pure functions of the records: the CSV
(which holds only real attacks) is enough to recompute them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

from ggl.audit.baselines import direction

WORST_CASE = "best per victim"   # the attacker column of a worst-case point
WIN_METRIC = "psnr"              # which attacker "won" a victim (whose reconstruction is shown)


def _better(metric: str, a: Optional[float], b: Optional[float]) -> bool:
    """Is score ``a`` more leakage than ``b`` on ``metric`` (None and non-finite never are)?"""
    if a is None or not math.isfinite(a):
        return False
    if b is None or not math.isfinite(b):
        return True
    sign = direction(metric) or 1
    return sign * a > sign * b


def _best(metric: str, values) -> Optional[float]:
    """The value of most leakage on ``metric`` (None when none is finite)."""
    best = None
    for v in values:
        if _better(metric, v, best):
            best = v
    return best


def point_key(point: dict) -> Tuple:
    """What a worst case is taken over the attackers of: one setting, round and probe of one dataset/model."""
    return point["setting"], point["round"], point["probe"], point["dataset"], point["model"]


def victim_key(rec) -> Tuple:
    return rec.seed, rec.round, rec.probe, rec.image, rec.victim_id


def best_record(records: Sequence) -> Tuple[object, str]:
    """One victim's records (one per attacker) -> (a record holding the best score of any attacker on
    every metric and leakage, the attacker that won on PSNR)."""
    winner = records[0]
    for r in records[1:]:
        if _better(WIN_METRIC, r.metrics.get(WIN_METRIC), winner.metrics.get(WIN_METRIC)):
            winner = r
    metrics = {key: next((r.metrics[key] for r in records if r.metrics.get(key) is not None), None)
               if key.startswith("reid_gallery")
               else _best(key, (r.metrics.get(key) for r in records))  # gallery sizes: the same for every attacker
               for key in dict.fromkeys(k for r in records for k in r.metrics)}
    leakage = {key: _best(key, (r.leakage.get(key) for r in records))
               for key in dict.fromkeys(k for r in records for k in r.leakage)}
    rec = dataclasses.replace(winner, setting=f"{winner.defense}@{WORST_CASE}", attacker="portfolio",
                              attacker_name=WORST_CASE, metrics=metrics, leakage=leakage)
    return rec, winner.attacker_id


def worst_case_points(points: List[dict]) -> List[dict]:
    """One worst-case point per (defence, round, probe, dataset, model) with >= 2 attackers. Each holds
    ``pairs`` (the combined records, each with its federation), ``won_by`` (victim key -> attacker),
    ``wins`` ({attacker: victims won}) and ``sources`` (the winning attacker's point per victim, for the
    figure), plus the fields of its attackers' points."""
    groups: Dict[tuple, List[dict]] = {}
    for p in points:
        groups.setdefault(point_key(p), []).append(p)
    out = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        by_victim: Dict[tuple, List[tuple]] = {}
        for p in members:
            for rec, fed in p["pairs"]:
                by_victim.setdefault(victim_key(rec), []).append((rec, fed, p))
        pairs, won_by, wins, sources = [], {}, {}, {}
        for vk, entries in by_victim.items():
            rec, winner = best_record([e[0] for e in entries])
            fed = next((e[1] for e in entries if e[1] is not None), None)
            pairs.append((rec, fed))
            won_by[vk] = winner
            wins[winner] = wins.get(winner, 0) + 1
            sources[vk] = next(e[2] for e in entries if e[0].attacker_id == winner)
        first = members[0]
        out.append({**first, "attacker": "portfolio", "attacker_name": WORST_CASE, "pairs": pairs,
                    "derived": True, "won_by": won_by, "sources": sources,
                    "wins": dict(sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "attackers": [p["attacker_name"] for p in members], "n_images": len(pairs),
                    "victims": tuple((r.seed, r.victim_id) for r, _ in pairs), "images": None})
    return out


def wins_text(point: dict) -> str:
    """'ggl-l2-adaptive 20, ggl-eot 12' (victims won on PSNR)."""
    return ", ".join(f"{k} {v}" for k, v in (point.get("wins") or {}).items()) or "–"
