"""The leakage of a setting = the strongest attacker per victim (the evidence rules' leakage figure).

``best_per_victim`` is a pure function of per-victim records: it never re-runs anything, so a report
can compute it from results files.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence

# metrics where a lower value means more leakage; every other metric: higher = more leakage
LOWER_IS_WORSE_PRIVACY = ("lpips", "mse", "feature_mse", "loss")


def _field(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def _score(record: Any, metric: str) -> Any:
    """A flat row's ``record[metric]``, or an ``ggl.audit.records.ImageRecord``'s ``record.metric(metric)``."""
    if not isinstance(record, Mapping) and callable(getattr(record, "metric", None)):
        return record.metric(metric)
    return _field(record, metric)


def best_per_victim(records: Iterable[Any], metric: str = "psnr",
                    victim_key: Sequence[str] | str = ("defense", "round", "probe", "image"),
                    attacker_key: str = "attacker", higher_is_better: Optional[bool] = None,
                    exclude: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Per victim, the attacker whose reconstruction scores best on ``metric``, and its score.

    ``records``: one per (attacker, victim): flat mappings (e.g. the ``per_image`` rows of the attack
    runs) or ``ggl.audit.records.ImageRecord`` objects (metrics through ``.metric``), each with
    ``attacker_key`` and the ``victim_key`` fields (the same victim = the same values). The default
    key suits ``ImageRecord``: defence setting (without the attacker), round, capture, image.
    ``higher_is_better``: None = from the metric's name (lpips, mse, feature_mse, loss: lower wins).
    Missing or non-finite scores never win; a victim with none is reported with ``best_attacker``
    None. Ties go to the attacker seen first (the order of ``records``), so the result is deterministic.
    ``exclude``: attackers left out of the maximum (e.g. to show the non-adaptive row for contrast).

    Returns one dict per victim, in order of first appearance: the victim fields, ``best_attacker``,
    ``best_<metric>``, and ``scores`` {attacker: score} of every attacker of that victim.
    """
    keys = (victim_key,) if isinstance(victim_key, str) else tuple(victim_key)
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_WORSE_PRIVACY
    out: Dict[Hashable, Dict[str, Any]] = {}
    for r in records:
        vid = tuple(_field(r, k) for k in keys)
        entry = out.setdefault(vid, {**{k: _field(r, k) for k in keys}, "best_attacker": None,
                                     f"best_{metric}": None, "scores": {}})
        name = _field(r, attacker_key)
        value = _score(r, metric)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        entry["scores"][name] = float(value) if ok else None
        if not ok or name in exclude:
            continue
        best = entry[f"best_{metric}"]
        if best is None or (value > best if higher_is_better else value < best):
            entry["best_attacker"], entry[f"best_{metric}"] = name, float(value)
    return list(out.values())


def wins(best: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
    """How many victims each attacker won (for the report's 'which attacker won' column)."""
    counts: Dict[str, int] = {}
    for b in best:
        if b["best_attacker"] is not None:
            counts[b["best_attacker"]] = counts.get(b["best_attacker"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
