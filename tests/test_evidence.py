"""The report's seeds-aware evidence (issue 26) on hand-made records: a victim's search seeds are averaged
before any CI, CIs resample victims within federation seeds, the worst case is a maximum over a fixed number
of attackers chosen on another search seed, the best-of-k control, and each attacker against fp32 on the
same victims. Scores are multiples of 1/4, so every mean below is exact."""
from __future__ import annotations

from ggl.audit.records import ImageRecord
from ggl.report.decomposition import attacker_rows, reference_attacker, sections, selection_rows, threat_rows
from ggl.report.evidence import (best_of_runs, fixed_worst_case, paired_diff, per_victim, runs, search_noise,
                                 stratified_ci)
from ggl.report.points import build_points, portfolio_size, worst_cases
from ggl.report.tables import md_table


def rec(defense, attacker, fed_seed, victim, search, psnr, rnd=9):
    return ImageRecord(setting=f"{defense}@{attacker}", defense=defense, attacker=attacker, adaptive=False,
                       seed=fed_seed, round=rnd, capture_id=f"{defense}-r{rnd}-{victim}", victim_index=victim,
                       image=0, label=1, label_pred=1, batch_label_acc=1.0, metrics={"psnr": psnr},
                       search={"index": search})


def point(points, defense, attacker):
    return next(p for p in points if p.worst_case is None and p.key.defense == defense and p.key.attacker == attacker)


# scores[defense][attacker][(fed seed, victim)] = (run 0, run 1)
SCORES = {
    "fp32": {"ggl-l2": {(0, 1): (20.0, 22.0), (0, 2): (18.0, 18.0), (1, 3): (21.0, 23.0), (1, 4): (19.0, 19.0)},
             "inverting-gradients": {(0, 1): (24.0, 23.0), (0, 2): (16.0, 16.0), (1, 3): (22.0, 22.0),
                                     (1, 4): (17.0, 18.0)}},
    "q4": {"ggl-l2": {(0, 1): (17.0, 19.0), (0, 2): (16.0, 16.0), (1, 3): (18.0, 18.0), (1, 4): (15.0, 17.0)},
           "inverting-gradients": {(0, 1): (12.0, 12.0), (0, 2): (11.0, 11.0), (1, 3): (12.0, 12.0),
                                   (1, 4): (11.0, 11.0)},
           "ggl-l2-decoded": {(0, 1): (19.0, 18.0), (0, 2): (17.0, 17.0), (1, 3): (19.0, 20.0),
                              (1, 4): (16.0, 16.0)}},
}


def points_of(scores=SCORES):
    pairs = [(rec(d, a, s, v, i, x), None) for d, by_a in scores.items() for a, by_v in by_a.items()
             for (s, v), xs in by_v.items() for i, x in enumerate(xs)]
    return build_points(pairs)


def test_search_seeds_are_averaged_per_victim_before_the_ci():
    pts = points_of()
    p = point(pts, "fp32", "ggl-l2")
    assert p.n_images == 4  # 8 records, 4 victims
    assert per_victim(p, "psnr") == {(0, 9, 1, 0): 21.0, (0, 9, 2, 0): 18.0, (1, 9, 3, 0): 22.0, (1, 9, 4, 0): 19.0}
    assert p.ci("psnr").mean == 20.0 and p.ci("psnr").n == 4
    assert search_noise(p, "psnr") == (2 + 0 + 2 + 0) / 4


def test_the_ci_resamples_victims_within_federation_seeds():
    """Two seeds whose victims agree within each seed: resampling within seeds never moves the mean,
    where resampling all victims together would."""
    same = {(0, 9, v, 0): 10.0 for v in range(5)} | {(1, 9, v, 0): 20.0 for v in range(5, 10)}
    c = stratified_ci(same)
    assert (c.low, c.mean, c.high, c.n) == (15.0, 15.0, 15.0, 10)
    from ggl.core.stats import mean_ci

    pooled = mean_ci(list(same.values()))
    assert pooled.high - pooled.low > 1.0


def test_the_fixed_worst_case_chooses_on_seed_0_and_scores_seed_1():
    pts = points_of()
    q4 = [p for p in pts if p.worst_case is None and p.key.defense == "q4"]
    fp32 = [p for p in pts if p.worst_case is None and p.key.defense == "fp32"]
    assert portfolio_size([q4, fp32]) == 2  # fp32 ran two attackers
    worst = fixed_worst_case(q4, "psnr", 2)
    # seed-0 means: decoded 17.75, ggl-l2 16.5, IG 11.5 -> decoded and ggl-l2; scored on their seed-1 runs
    assert worst.attackers == ("ggl-l2-decoded", "ggl-l2")
    assert worst.values == {(0, 9, 1, 0): 19.0, (0, 9, 2, 0): 17.0, (1, 9, 3, 0): 20.0, (1, 9, 4, 0): 17.0}
    assert fixed_worst_case(q4, "psnr", 4) is None  # fewer attackers than k
    # the report's worst-case point (headline table, figures, comparisons) is this one
    head = next(p for p in worst_cases(pts) if p.key.defense == "q4")
    assert head.worst_case.attackers == worst.attackers and head.n_images == 4
    assert {(r.seed, r.round, r.victim_index, r.image): r.metrics["psnr"] for r, _ in head.pairs} == worst.values


def test_the_best_of_k_control_and_pairing_across_settings():
    pts = points_of()
    l2_q4, l2_fp32 = point(pts, "q4", "ggl-l2"), point(pts, "fp32", "ggl-l2")
    assert best_of_runs(l2_q4, "psnr", 2) == {(0, 9, 1, 0): 19.0, (0, 9, 2, 0): 16.0, (1, 9, 3, 0): 18.0,
                                              (1, 9, 4, 0): 17.0}
    assert best_of_runs(l2_q4, "psnr", 3) == {}  # two runs only
    # the same victim in two settings (different capture ids): q4 - fp32 per victim
    d = paired_diff(per_victim(l2_q4, "psnr"), per_victim(l2_fp32, "psnr"))
    assert d.ci.mean == ((18 - 21) + (16 - 18) + (18 - 22) + (16 - 19)) / 4 and d.ci.n == 4
    assert d.spread == (-3.5, -2.5)  # federation seed 1's mean difference, seed 0's


def test_runs_read_the_search_seed_index_and_a_record_without_one_is_run_0():
    r = rec("fp32", "ggl-l2", 0, 1, 0, 5.0)
    r.search = {}
    (p,) = [p for p in build_points([(r, None)]) if p.worst_case is None]
    assert runs(p, "psnr") == {(0, 9, 1, 0): {0: 5.0}}


def test_the_report_sections_decompose_per_attacker_and_per_threat_model():
    pts = points_of()
    k, threat = threat_rows(pts)
    assert k == 2 and len(threat) == 1
    row = dict(zip(["setting", "round", "victims", "l2", "l2_ref", "l2_d"], threat[0]))
    assert (row["setting"], row["round"], row["victims"]) == ("q4", "9", "4 (2)")
    assert row["l2_d"].startswith("-3.00")
    rows = {r[2]: r for r in attacker_rows(pts)}
    assert rows["ggl-l2-decoded"][3] == "ggl-l2" and rows["inverting-gradients"][3] == "inverting-gradients"
    assert rows["inverting-gradients"][7].startswith("-8.25")  # (12+11+12+11)/4 - (23.5+16+22+17.5)/4
    (sel,) = [r for r in selection_rows(pts, k) if r[0] == "q4"]
    assert sel[2].startswith("17.50")  # one ggl-l2 run (seed 1): (19 + 16 + 18 + 17) / 4
    assert sel[3].startswith("17.50")  # best of its 2 runs: the same here (seed 1 is never worse)
    assert sel[4].startswith("18.25")  # best of k = 2 attackers (decoded, ggl-l2) on seed 1: 19, 17, 20, 17
    assert sel[5].startswith("18.25")  # best of every run of every attacker: 19, 17, 20, 17
    md = "\n".join(sections(pts, md_table))
    assert "## The answer per threat model" in md and "k = 2 attackers" in md


def test_sections_need_two_search_seeds_and_references_fall_back_to_the_base_attacker():
    one = {d: {a: {v: xs[:1] for v, xs in by_v.items()} for a, by_v in by_a.items()} for d, by_a in SCORES.items()}
    assert sections(points_of(one), md_table) == []
    assert reference_attacker("ggl-cosine-decoded", ["ggl-l2", "ggl-cosine"]) == "ggl-cosine"
    assert reference_attacker("ggl-cell", ["ggl-l2"]) == "ggl-l2"
    assert reference_attacker("ggl-cosine-decoded", ["ggl-l2"]) is None
