"""ggl.report.points' worst case: a setting's leakage against the portfolio is, per victim, the best any attacker did on
each metric (lower is better for LPIPS), with the PSNR winner named; missing scores never win."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from ggl.audit.legacy import record_from_row
from ggl.audit.records import ImageRecord
from ggl.report.points import (WORST_CASE, FedSummary, Point, PointKey, best_record, build_points, comparisons,
                               worst_case_points)


def _rec(name: str, probe: str, psnr, lpips, reid, leak):
    return ImageRecord(setting=f"q4@{name}", defense="q4", attacker=name, adaptive=True, seed=0, round=9,
                       capture_id=probe, victim_index=int(probe[-1]), image=0, label=1, label_pred=1, batch_label_acc=1.0,
                       metrics={"psnr": psnr, "lpips": lpips, "reid_top1_feature_class": reid,
                                "reid_gallery_class": 200.0},
                       leakage={"psnr": leak}, images=f"{name}.pt")


def test_each_metric_takes_its_own_best_attacker_and_the_psnr_winner_is_named():
    recs = [_rec("ggl-l2", "b0", 15.0, 0.30, 0.0, 1.0), _rec("ggl-eot", "b0", 18.0, 0.40, 0.0, 4.0),
            _rec("inverting-gradients", "b0", None, 0.10, 1.0, None)]
    best, winner = best_record(recs)
    assert winner == "ggl-eot" and best.images == "ggl-eot.pt"  # the figure shows the winner's image
    assert best.metrics == {"psnr": 18.0, "lpips": 0.10, "reid_top1_feature_class": 1.0, "reid_gallery_class": 200.0}
    assert best.leakage == {"psnr": 4.0} and best.attacker == WORST_CASE and best.defense == "q4"
    # non-finite scores never win (ggl-l2's 15 beats an inf and a nan PSNR)
    odd = [_rec("ggl-eot", "b0", float("inf"), None, None, None), _rec("ggl-l2", "b0", 15.0, None, None, None),
           _rec("inverting-gradients", "b0", float("nan"), None, None, None)]
    assert best_record(odd)[1] == "ggl-l2" and best_record(odd)[0].metrics["psnr"] == 15.0


def test_the_worst_case_leakage_is_the_largest_whatever_the_metrics_direction():
    """Leakage is already signed so that higher = more leakage: for LPIPS (lower = closer) the worst case
    keeps the largest leakage, not the smallest (it did, through the metric's own direction)."""
    a, b = _rec("ggl-l2", "b0", 15.0, 0.30, 0.0, 1.0), _rec("ggl-eot", "b0", 14.0, 0.20, 0.0, 0.5)
    a.leakage, b.leakage = {"psnr": 1.0, "lpips": 0.05}, {"psnr": 0.5, "lpips": 0.20}
    assert best_record([a, b])[0].leakage == {"psnr": 1.0, "lpips": 0.20}


def test_ties_go_to_the_first_attacker_and_points_pair_victims_by_capture():
    a = [_rec("ggl-l2", "b0", 20.0, 0.2, 1.0, 5.0), _rec("ggl-l2", "b1", 10.0, 0.5, 0.0, -1.0)]
    b = [_rec("ggl-l2-adaptive", "b0", 20.0, 0.2, 1.0, 5.0), _rec("ggl-l2-adaptive", "b1", 14.0, 0.4, 0.0, 2.0)]
    points = [Point(key=PointKey("q4", name, 9, "fedsgd", "mnist5k", "cnn"), pairs=tuple((r, None) for r in recs),
                    fed=FedSummary(), seeds=(0,), kind="adaptive")
              for name, recs in (("ggl-l2", a), ("ggl-l2-adaptive", b))]
    (worst,) = worst_case_points(points)
    assert [r.metrics["psnr"] for r, _ in worst.pairs] == [20.0, 14.0]
    assert worst.worst_case.wins == {"ggl-l2": 1, "ggl-l2-adaptive": 1} and worst.n_images == 2
    assert worst.key.attacker == WORST_CASE and worst.kind == "portfolio"
    # a single attacker is its own worst case: no derived point
    assert worst_case_points(points[:1]) == []


def test_a_portfolio_row_names_its_defence_and_attacker():
    row = {"setting": "q2-stochastic-global@ggl-eot", "attacker_name": "ggl-eot", "attacker_models": "eot",
           "probe_kind": "fedsgd", "observation": "r0009_b000", "image": 0, "dataset_index": 7, "round": 9,
           "psnr": 12.0}
    rec = record_from_row(row, {"attack": {"adaptive": False}}, None)
    assert (rec.defense, rec.adaptive, rec.attacker, rec.probe, rec.round) == \
        ("q2-stochastic-global", True, "ggl-eot", "fedsgd", 9)
    plain = record_from_row({**row, "setting": "q4", "attacker_name": None, "attacker_models": None}, {"attack": {}}, None)
    assert (plain.defense, plain.adaptive, plain.attacker) == ("q4", False, "ggl-l2")


def test_adaptive_inverting_gradients_runs_only_where_it_models_something():
    from ggl.attack.attackers import get_attacker
    from ggl.sweep.plan import portfolio_for

    names = ["inverting-gradients", "inverting-gradients-adaptive"]
    assert get_attacker(names[1]).models == "adaptive" and get_attacker(names[0]).models == "none"
    q4 = [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]
    assert portfolio_for(names, q4, "q4") == names
    assert portfolio_for(names, [], "fp32") == names[:1]  # no defence: it would repeat its twin


@pytest.fixture
def throwaway_attackers():
    """Three attackers registered as a plug-in author would (undone afterwards): two without ``order`` (in
    registration order, zz- first), one with ``order`` and ``compare_with``."""
    import ggl.attack.attackers as attackers

    before, reporting = attackers._REGISTRY.snapshot(), dict(attackers._REPORTING)

    @attackers.register("mid", order=15, compare_with=("ggl-l2",), kind="c")
    @attackers.register("aa-second", kind="b")
    @attackers.register("zz-first", kind="a")
    @dataclass
    class Throwaway(attackers.Attacker):
        kind: str = ""

    yield
    attackers._REGISTRY.restore(before)
    attackers._REPORTING.clear()
    attackers._REPORTING.update(reporting)


def test_table_order_and_comparisons_come_from_the_attackers_registrations(throwaway_attackers):
    from ggl.attack.attackers import attacker_order, compare_with

    shipped = ["ggl-l2", "ggl-l2-adaptive", "ggl-cosine", "ggl-cosine-adaptive", "ggl-eot", "inverting-gradients",
               "inverting-gradients-adaptive"]
    order = attacker_order()  # other undeclared attackers (the grid ones) sit between the shipped and ours
    assert order[:8] == [shipped[0], "mid", *shipped[1:]] and order[-2:] == ["zz-first", "aa-second"]
    assert compare_with("ggl-eot") == ("ggl-l2-adaptive", "ggl-l2") and compare_with("zz-first") == ()
    names = ["gone-attacker", "aa-second", "zz-first", "mid", "ggl-l2"]  # gone-attacker: an older run's, unregistered
    recs = [_rec(name, f"b{v}", 10.0 + i + v, None, 0.5, 1.0) for i, name in enumerate(names) for v in (1, 2)]
    points = build_points([(r, None) for r in recs])
    assert [p.key.attacker for p in points] == [WORST_CASE, "ggl-l2", "mid", "zz-first", "aa-second", "gone-attacker"]
    assert [name for name, *_ in comparisons(points) if "−" in name and ":" in name] == ["q4: mid − ggl-l2"] * 2


def test_the_report_names_only_the_rows_its_reconstructions_figure_leaves_out(tmp_path):
    """reconstructions.png draws each setting's worst case from its winners' images.pt: with those files here the
    report must not call the row missing (it named every worst case, once per round); a setting whose file is
    gone, unreadable or of another size is named, with its round, by the code that draws the figure."""
    from dataclasses import replace

    import torch

    from ggl.report.figures import reconstruction_rows, rows_left_out

    def images(n):
        return {k: torch.zeros(n, 1, 4, 4) for k in ("originals", "reconstructions", "prior_only")}

    here, short, damaged = tmp_path / "here.pt", tmp_path / "short.pt", tmp_path / "damaged.pt"
    torch.save(images(2), here)
    torch.save(images(1), short)  # one image for two victims: not this attack's file
    damaged.write_bytes(b"not a torch file")
    points = []
    for defense, path in (("q4", here), ("sign", tmp_path / "gone.pt"), ("q2", short), ("clip0.25", damaged)):
        for name in ("ggl-l2", "ggl-cell"):
            recs = [replace(_rec(name, probe, 20.0, None, 1.0, 5.0), defense=defense, images=str(path))
                    for probe in ("b0", "b1")]
            points.append(Point(key=PointKey(defense, name, 9, "fedsgd", "mnist5k", "cnn"),
                                pairs=tuple((r, None) for r in recs), fed=FedSummary(), seeds=(0,), kind="adaptive",
                                images=path))
    heads = worst_case_points(points)
    assert [p.key.defense for p in rows_left_out(points + heads)] == ["sign", "q2", "clip0.25"]
    drawn = [title for title, _ in reconstruction_rows(points + heads)]
    assert drawn[0] == "original" and [t.split(",")[0] for t in drawn[1:-1]] == ["q4"]


def test_a_points_victims_do_not_depend_on_order_or_search_seeds():
    """The report's 'different sets of victim images' note compares points' victims: the same victims in
    another order, or each attacked by two search seeds, are the same set."""
    one = [_rec("ggl-l2", probe, 20.0, None, 1.0, 5.0) for probe in ("b0", "b1")]
    point = lambda recs: Point(key=PointKey("q4", "ggl-l2", 9, "fedsgd", "mnist5k", "cnn"),  # noqa: E731
                               pairs=tuple((r, None) for r in recs), fed=FedSummary(), seeds=(0,), kind="adaptive")
    assert point(one).victims == point(one[::-1]).victims == point(one + one[::-1]).victims
    assert point(one).victims != point(one[:1]).victims


def test_the_report_names_defended_points_that_no_attacker_modelling_the_defence_attacked():
    """The first complete headline showed clip0.25 at round 0 near the label-only level because no attacker in
    the portfolio modelled clipping: the report must say so for such a point, and stop once one ran."""
    from dataclasses import replace

    from ggl.report.tables import unmodelled

    def point(defense, name, adaptive, rnd=0):
        recs = [replace(_rec(name, probe, 12.0, None, 0.0, 0.5), defense=defense, adaptive=adaptive, round=rnd)
                for probe in ("b0", "b1")]
        return Point(key=PointKey(defense, name, rnd, "fedsgd", "mnist5k", "cnn"), pairs=tuple((r, None) for r in recs),
                     fed=FedSummary(), seeds=(0,), kind="adaptive" if adaptive else "non-adaptive")

    blind = [point("clip0.25", "ggl-l2", False), point("clip0.25", "inverting-gradients", False),
             point("clip0.25", "ggl-l2", False, rnd=9), point("fp32", "ggl-l2", False)]
    heads = worst_case_points(blind)
    assert unmodelled(blind + heads) == ["clip0.25 round 0", "clip0.25 round 9"]  # fp32 has nothing to model
    fixed = blind + [point("clip0.25", "ggl-l2-adaptive", True)]
    assert unmodelled(fixed + worst_case_points(fixed)) == ["clip0.25 round 9"]
