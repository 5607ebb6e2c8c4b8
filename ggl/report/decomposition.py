"""The report's seeds-aware sections (``ggl.report.evidence``): the answer per threat model, each attacker
against no defence on the same victims and seeds, and how much of the worst case is selection. Shown where
the attackers ran two or more search seeds per victim; PSNR in dB throughout."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ggl.core.stats import MeanCI, fmt
from ggl.report.evidence import (CONTROL, REFERENCE, Diff, best_of_runs, fixed_worst_case, paired_diff,
                                 per_victim, scored, search_noise, single_run, stratified_ci)
from ggl.report.points import Point, best_record, portfolio_size, victim_key

KEY = "psnr"
Group = Tuple[object, ...]  # PointKey.setting: (defence, round, probe, dataset, model)

THREAT_COLUMNS = ["setting", "round", "victims (fed seeds)", "L2 GGL: PSNR", "fp32", "Δ [95% CI]", "p",
                  "Δ per fed seed", "best of k attackers: PSNR", "fp32", "Δ [95% CI]", "p", "Δ per fed seed",
                  "its attackers (this setting)"]
ATTACKER_COLUMNS = ["setting", "round", "attacker", "against fp32's", "n", "PSNR", "fp32 PSNR", "Δ [95% CI]", "p",
                    "Δ per fed seed", "search noise |run 0 − run 1|"]
SELECTION_COLUMNS = ["setting", "round", "one ggl-l2 run", "best of k ggl-l2 runs", "best of k attackers",
                     "best of every run of every attacker", "n"]


def groups(points: Sequence[Point]) -> Dict[Group, List[Point]]:
    out: Dict[Group, List[Point]] = {}
    for p in points:
        if p.worst_case is None:
            out.setdefault(p.key.setting, []).append(p)
    return out


def _reference(group: Group, by_group: Dict[Group, List[Point]]) -> Optional[List[Point]]:
    _, rnd, probe, dataset, model = group
    return by_group.get((REFERENCE, rnd, probe, dataset, model))


def reference_attacker(name: str, available: Sequence[str]) -> Optional[str]:
    """Which fp32 attacker an attacker is compared with: itself where it ran there, else the attacker it
    refines (its name less -decoded / -observed-grid / -adaptive; ggl-cell and ggl-eot: ggl-l2)."""
    if name in available:
        return name
    for suffix in ("-decoded", "-observed-grid", "-adaptive"):
        if name.endswith(suffix) and name[:-len(suffix)] in available:
            return name[:-len(suffix)]
    return CONTROL if name in ("ggl-cell", "ggl-eot") and CONTROL in available else None


def _ci(c: Optional[MeanCI]) -> str:
    return c.fmt() if c is not None else "–"


def _diff(d: Optional[Diff]) -> List[str]:
    if d is None:
        return ["–", "–", "–"]
    spread = f"{d.spread[0]:+.2f} … {d.spread[1]:+.2f}" if d.spread else "–"
    return [d.ci.fmt("+.2f"), f"{d.p_value:.2g}", spread]


def _label(group: Group) -> List[str]:
    return [str(group[0]), "–" if group[1] is None else str(group[1])]


def seeded(points: Sequence[Point]) -> bool:
    """Did any attacker run two or more search seeds per victim (the sections need it)?"""
    return any(scored(p, KEY) for p in points if p.worst_case is None)


def threat_rows(points: Sequence[Point]) -> Tuple[int, List[List[str]]]:
    """(k, rows): per setting and round, what the L2 GGL attacker and the best of k attackers lose to it."""
    by = groups(points)
    k = portfolio_size(by.values())
    rows = []
    for group, members in by.items():
        ref = _reference(group, by)
        if group[0] == REFERENCE or ref is None:
            continue
        l2 = next((per_victim(p, KEY) for p in members if p.key.attacker == CONTROL), {})
        l2_ref = next((per_victim(p, KEY) for p in ref if p.key.attacker == CONTROL), {})
        worst, worst_ref = fixed_worst_case(members, KEY, k), fixed_worst_case(ref, KEY, k)
        fw = worst.values if worst else {}
        fw_ref = worst_ref.values if worst_ref else {}
        seeds = len({v[0] for v in l2 or fw})
        rows.append(_label(group) + [f"{len(l2 or fw)} ({seeds})", _ci(stratified_ci(l2)), _ci(stratified_ci(l2_ref))]
                    + _diff(paired_diff(l2, l2_ref)) + [_ci(stratified_ci(fw)), _ci(stratified_ci(fw_ref))]
                    + _diff(paired_diff(fw, fw_ref)) + [", ".join(worst.attackers) if worst else "–"])
    return k, rows


def attacker_rows(points: Sequence[Point]) -> List[List[str]]:
    """Each attacker of each setting and round against fp32's on the same victims and seeds."""
    by = groups(points)
    rows = []
    for group, members in by.items():
        ref = _reference(group, by)
        if group[0] == REFERENCE or ref is None:
            continue
        ref_by = {p.key.attacker: p for p in ref}
        for p in members:
            name = reference_attacker(p.key.attacker, list(ref_by))
            if name is None:
                continue
            mine, theirs = per_victim(p, KEY), per_victim(ref_by[name], KEY)
            noise = search_noise(p, KEY)
            rows.append(_label(group) + [p.key.attacker, name, str(len([v for v in mine if v in theirs])),
                                         _ci(stratified_ci(mine)), _ci(stratified_ci(theirs))]
                        + _diff(paired_diff(mine, theirs)) + [fmt(noise, ".2f")])
    return rows


def selection_rows(points: Sequence[Point], k: int) -> List[List[str]]:
    """Per setting and round: one run of ggl-l2, the best of its k runs (the control), the best of k
    attackers, and the best of every run of every attacker (the old worst case)."""
    rows = []
    for group, members in groups(points).items():
        control = next((p for p in members if p.key.attacker == CONTROL), None)
        if control is None or k < 1:
            continue
        worst = fixed_worst_case(members, KEY, k)
        everything: Dict[tuple, list] = {}
        for p in members:
            for rec, _ in p.pairs:
                everything.setdefault(victim_key(rec), []).append(rec)
        best_all = {v: best_record(recs)[0].metrics.get(KEY) for v, recs in everything.items()}
        best_all = {v: x for v, x in best_all.items() if x is not None}
        control_k = best_of_runs(control, KEY, k)
        rows.append(_label(group) + [_ci(stratified_ci(single_run(control, KEY))),
                                     _ci(stratified_ci(control_k)) if control_k else "– (fewer runs)",
                                     _ci(stratified_ci(worst.values)) if worst else "–",
                                     _ci(stratified_ci(best_all)), str(len(per_victim(control, KEY)))])
    return rows


THREAT_INTRO = ("Per setting and round, against no defence (fp32) on the same victims and federation seeds: what "
                "the L2 GGL attacker (ggl-l2, no model of the defence) loses, and what the best of k attackers "
                "loses. Each victim's score is the mean of its search seeds' runs (one run's expected score); the "
                "best of k attackers takes the k attackers with the highest mean on search seed 0 and, per victim, "
                "the best of their seed-1 runs, so every setting's worst case is a maximum over k runs, k the "
                "fewest attackers any setting ran. CIs resample victims within federation seeds; p: Wilcoxon "
                "signed-rank; Δ per fed seed: the lowest and highest federation seed's mean difference.")
ATTACKER_INTRO = ("Each attacker against fp32's on the same victims and seeds (an attacker that needs a defence "
                  "is compared with the attacker it refines: -decoded, -observed-grid and -adaptive with their "
                  "base, ggl-cell and ggl-eot with ggl-l2). Search noise: the mean distance between two search "
                  "seeds' runs on the same victim.")
SELECTION_INTRO = ("How much of a worst case is selection: one run of ggl-l2, the best of k runs of it (the "
                   "control: k runs of one attacker), the best of k attackers (above), and the best of every run "
                   "of every attacker (the earlier reports' worst case, which grows with the number of runs).")


NO_REFERENCE = ["(no setting here has an fp32 run at the same round to compare with)"]


def sections(points: Sequence[Point], table) -> List[str]:
    """The markdown of the three sections (``table``: ``tables.md_table``); [] without search seeds."""
    if not seeded(points):
        return []
    k, threat = threat_rows(points)
    lines = ["", "## The answer per threat model", "", THREAT_INTRO.replace("k attackers", f"k = {k} attackers", 1), ""]
    lines += table(THREAT_COLUMNS, threat) if threat else NO_REFERENCE
    per_attacker = attacker_rows(points)
    lines += ["", "## Each attacker against no defence", "", ATTACKER_INTRO, ""]
    lines += table(ATTACKER_COLUMNS, per_attacker) if per_attacker else NO_REFERENCE
    lines += ["", f"## How much of the worst case is selection (k = {k})", "", SELECTION_INTRO, ""]
    lines += table(SELECTION_COLUMNS, selection_rows(points, k))
    return lines
