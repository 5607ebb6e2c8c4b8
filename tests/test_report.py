"""ggl.report on a folder of synthetic results.json files with fixed numbers: the table rows (means with
95% bootstrap CIs), the pairing of attacks with their federations, newest-wins, the per-image CSV from
which every number of the table is recomputed, ``--from-csv``, the figures, old and malformed files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ggl.audit.legacy import record_from_row
from ggl.audit.records import RECORDS_FORMAT, FederationRef
from ggl.report.build import main, write_report
from ggl.report.collect import collect
from ggl.defenses import defense_family
from ggl.report.figures import dodge, reconstruction_rows
from ggl.report.points import build_points
from ggl.core.stats import mean_ci, stratified_mean_ci

Q4 = {"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}
# per image: the three label-only baselines' PSNR; the best is 12 and 14 (mean 13)
BASE = {"prior_mean": (12.0, 13.0), "public_mean": (11.0, 14.0), "prior_sample": (10.0, 12.0)}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _fed(root: Path, name: str, stamp: str, defenses, acc: float, bits: float, ratio: float,
         privacy=None, seed=0, failed=0) -> Path:
    run = root / name / stamp
    (run / "audit" / "observations").mkdir(parents=True)
    _write(run / "results.json", {
        "config": {"task": "fedavg", "seed": seed, "data": {"name": "digits"}, "model": {"name": "cnn"},
                   "fl": {"rounds": 2}, "defenses": defenses},
        "final": {"test_acc": acc, "test_loss": 1.0, "rounds": 2, "uplink_bits_per_round": bits,
                  "compression_ratio": ratio, "rejected_updates": 0, "failed_clients": failed, "privacy": privacy},
        "history": [], "wall_seconds": 3.0})
    return run


def _images(path: Path, recon: float, originals: float = 1.0, n: int = 2) -> None:
    """The tensors attack.py saves per setting (n images of 1x8x8, constant values)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"originals": torch.full((n, 1, 8, 8), originals), "reconstructions": torch.full((n, 1, 8, 8), recon),
                "prior_only": torch.zeros(n, 1, 8, 8)}, path)


def _row(setting, i, p, s, reid, old):
    row = {"setting": setting, "observation": f"r0003_b{i:03d}", "image": 0, "dataset_index": 100 + i, "round": 3,
           "label_true": i % 10, "label_pred": i % 10, "psnr": p, "ssim": s}
    if old:  # results.json of the previous version: baseline_<metric> was the random prior sample
        row.update({"baseline_psnr": BASE["prior_sample"][i], "baseline_ssim": 0.5})
        return row
    row.update({"batch_label_acc": 1.0, "lpips": None, "reid_top1_feature_class": reid[i],
                "reid_rr_feature_class": 1.0 / (1 + 3 * (1 - reid[i])), "reid_gallery_all": 100.0,
                "reid_gallery_class": 10.0})
    for name, values in BASE.items():
        row.update({f"baseline_{name}_psnr": values[i], f"baseline_{name}_ssim": 0.5,
                    f"baseline_{name}_reid_top1_feature_class": 0.0, f"baseline_{name}_reid_rr_feature_class": 0.25})
    return row


def _attack(root: Path, name: str, stamp: str, source: Path, setting: str, adaptive: bool, psnr, ssims,
            originals: float = 1.0, reid=(1.0, 0.0), old=False, seed=0) -> Path:
    run = root / name / stamp
    rows = [_row(setting, i, p, s, reid, old) for i, (p, s) in enumerate(zip(psnr, ssims))]
    summary = {"psnr_mean": float(np.mean(psnr)), "psnr_std": float(np.std(psnr)), "ssim_mean": float(np.mean(ssims)),
               "lpips_mean": None, "label_acc": 1.0, "n_images": len(psnr), "wall_seconds": 1.0}
    config = {"task": "attack", "seed": seed, "attack": {"source": str(source), "adaptive": adaptive}}
    results = {"config": config, "settings": [setting], "per_image": rows, "summary": {setting: summary},
               "wall_seconds": 1.0}
    _write(run / "results.json", results if old else _records2(results))
    # the per-setting copy attack.py writes too: must not be counted twice
    _write(run / setting / "results.json", {"config": {**config, "setting": setting}, "per_image": rows,
                                            "summary": summary})
    _images(run / setting / "images.pt", recon=psnr[0] / 100, originals=originals)
    return run


def _records2(results: dict) -> dict:
    """The ``ggl.records/2`` file ggl.jobs.attack writes for these rows (records only, no ``per_image``)."""
    config = results["config"]
    ref = FederationRef.from_source(config["attack"]["source"])
    records = [record_from_row(r, {**config, "setting": r["setting"]}, ref).to_json() for r in results["per_image"]]
    return {k: v for k, v in results.items() if k != "per_image"} | {
        "federation": {"name": ref.name, "stamp": ref.stamp}, "records_format": RECORDS_FORMAT, "records": records}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fp32 = _fed(root, "fed-fp32", "20250101-000000", [], 0.9, 1.0e6, 1.0)
    q4 = _fed(root, "fed-q4", "20250101-000100", [Q4], 0.85, 2.5e5, 8.0)
    _attack(root, "attack-fp32", "20250101-000200", fp32, "fp32", False, [20.0, 22.0], [0.8, 0.9])
    # an older attack of the same setting and attacker: the newer one wins
    _attack(root, "attack-q4", "20250101-000250", q4, "q4", False, [30.0, 30.0], [0.99, 0.99])
    _attack(root, "attack-q4", "20250101-000300", q4, "q4", False, [15.0, 17.0], [0.6, 0.7], reid=(0.0, 0.0))
    _attack(root, "attack-q4-adaptive", "20250101-000400", q4 / "audit", "q4-adaptive", True, [18.0, 18.0],
            [0.75, 0.75], reid=(1.0, 1.0))
    _write(root / "gan_mnist" / "20250101-000500" / "results.json", {"config": {"task": "gan"}, "metrics": {}})
    return root


FULL = "| setting | round | probe | attacker |"  # the table of every attacker (and worst case)
HEAD = "| setting | round | probe | test acc |"      # the worst case per setting and round


def _table(md: str, header: str = FULL):
    """The cells of the markdown table whose header starts with ``header``."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header))
    out = []
    for l in lines[start + 2:]:
        if not l.startswith("| "):
            break
        out.append([c.strip() for c in l.strip("|").split("|")])
    return out


def test_report_rows_pairing_and_figures(runs, tmp_path):
    out = tmp_path / "reports"
    found = write_report([runs], out)
    md = (out / "privacy_utility.md").read_text()
    rows = _table(md)
    ci = lambda v, spec=".2f": mean_ci(v).fmt(spec)  # noqa: E731
    # sorted by accuracy (best first), then setting, round, the worst case first, then the portfolio's order
    assert [r[:8] for r in rows] == [
        ["fp32", "3", "–", "ggl-l2", "0.900", "–", ci([20.0, 22.0]), ci([0.8, 0.9], ".3f")],
        ["q4", "3", "–", "best per victim", "0.850", "–", "18.00 [18.00, 18.00]", "0.750 [0.750, 0.750]"],
        ["q4", "3", "–", "ggl-l2", "0.850", "–", ci([15.0, 17.0]), ci([0.6, 0.7], ".3f")],
        ["q4", "3", "–", "ggl-l2-adaptive", "0.850", "–", "18.00 [18.00, 18.00]", "0.750 [0.750, 0.750]"]]
    fp32 = rows[0]
    assert fp32[8] == f"{ci([1.0, 0.0])} (0.100)"  # re-id top-1, chance 1/10 (10 private images of the class)
    assert fp32[9].endswith(f"({(1 + 1/2 + 1/3 + 1/4 + 1/5 + 1/6 + 1/7 + 1/8 + 1/9 + 1/10) / 10:.3f})")
    assert fp32[10:13] == ["–", "100%", f"{ci([12.0, 14.0])} (prior mean)"]  # strongest baseline: the prior's mean
    assert fp32[13] == ci([20.0 - 12.0, 22.0 - 14.0]) and fp32[14] == ci([1.0, 0.0])
    assert fp32[15:] == ["2", "1", "1.00 Mbit", "1.0×", "–", "2", "digits"]
    # the headline table: one row per setting and round, the worst case where several attackers ran
    head = _table(md, HEAD)
    assert [(r[0], r[5], r[11], r[12]) for r in head] == [
        ("fp32", ci([20.0, 22.0]), "ggl-l2", ci([20.0, 22.0])),
        ("q4", "18.00 [18.00, 18.00]", "ggl-l2-adaptive 2", ci([15.0, 17.0]))]
    assert found.collected.skipped == [] and found.collected.ignored == 1  # the GAN run is not an error
    assert found.collected.superseded == 1  # the older q4 attack
    # the baselines over the 2 victims, each counted once although 3 attack runs scored them
    assert f"prior mean {ci([12.0, 13.0])} dB" in md
    cmp = _table(md, "| comparison")
    assert ["q4: adaptive − non-adaptive", "PSNR (dB)", "2", ci([3.0, 1.0])] == cmp[-2][:4]
    assert ["q4 round 3 best per victim − fp32 ggl-l2 (round 3)", "PSNR (dB)", "2", ci([18.0 - 20.0, 18.0 - 22.0])] \
        in [c[:4] for c in cmp]
    for name in ("privacy_utility.png", "reconstructions.png", "leakage_vs_round.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the victims, then each setting's worst case (its winner's images), then the prior-only images
    figure = reconstruction_rows(found.points)
    assert [label for label, _ in figure] == ["original", "fp32, ggl-l2: 21.0 dB, re-id 0.50",
                                              "q4, best per victim: 18.0 dB, re-id 1.00", "prior only: 11.0 dB"]
    assert [float(images.mean()) for _, images in figure] == pytest.approx([1.0, 0.20, 0.18, 0.0])


ORDER = ("best per victim", "ggl-l2", "ggl-l2-adaptive")


def _recompute_table(csv_path: Path) -> list:
    """Every cell of the report's table of every attacker from the CSV alone (plain csv, numpy and
    ggl.core.stats.mean_ci), the worst case per victim included."""
    with csv_path.open(newline="") as fh:
        lines = list(csv.DictReader(fh))
    points = {}
    for line in lines:  # in file order (the bootstrap resamples in this order)
        points.setdefault((line["defense"], line["round"], line["probe_kind"], line["attacker_name"]), []).append(line)
    settings = {}
    for (defense, rnd, probe, name), g in points.items():
        settings.setdefault((defense, rnd, probe), []).append(g)
    for (defense, rnd, probe), groups in settings.items():
        if len(groups) < 2:
            continue
        best = []  # per victim: the best of every attacker on each column (higher = more leakage here)
        for victim in zip(*groups):
            b = dict(max(victim, key=lambda l: float(l["psnr"])), attacker_name="best per victim")
            for key in ("psnr", "ssim", "reid_top1_feature_class", "reid_rr_feature_class", "leakage_psnr",
                        "leakage_reid_top1_feature_class"):
                b[key] = str(max(float(l[key]) for l in victim))
            best.append(b)
        points[(defense, rnd, probe, "best per victim")] = best

    def col(group, key):
        return [float(l[key]) if l[key] != "" else None for l in group]

    def ci(values, spec=".2f"):
        c = mean_ci(values)
        return "–" if c is None else c.fmt(spec)

    out = []
    for (defense, rnd, probe, attacker), g in points.items():
        base = {b: col(g, f"baseline_{b}_psnr") for b in ("prior_mean", "public_mean", "prior_sample")}
        best = [max(v[i] for v in base.values() if v[i] is not None) for i in range(len(g))]
        strongest = max((b for b in base if all(v is not None for v in base[b])), key=lambda b: np.mean(base[b]))
        gal = col(g, "reid_gallery_class")
        top1_chance = np.mean([1 / m for m in gal])
        rr_chance = np.mean([np.sum(1 / np.arange(1, int(m) + 1)) / m for m in gal])
        bits = float(g[0]["bits_per_round"])
        acc = np.mean(sorted({l['fed_run']: float(l['test_acc']) for l in g}.values()))
        out.append(((-acc, defense, probe, int(rnd), ORDER.index(attacker)), [
                    defense, rnd, probe or "–", attacker, f"{acc:.3f}", "–", ci(col(g, "psnr")), ci(col(g, "ssim"), ".3f"),
                    f"{ci(col(g, 'reid_top1_feature_class'))} ({top1_chance:.3f})",
                    f"{ci(col(g, 'reid_rr_feature_class'))} ({rr_chance:.3f})",
                    ci(col(g, "lpips"), ".3f"), f"{np.mean(col(g, 'batch_label_acc')):.0%}",
                    f"{ci(best)} ({strongest.replace('_', ' ')})", ci(col(g, "leakage_psnr")),
                    ci(col(g, "leakage_reid_top1_feature_class")), str(len(g)), str(len({l["seed"] for l in g})),
                    f"{bits / 1e6:.2f} Mbit" if bits >= 1e6 else f"{bits / 1e3:.2f} kbit",
                    f"{float(g[0]['compression_ratio']):.1f}×", "–", g[0]["rounds"], g[0]["dataset"]]))
    return [cells for _, cells in sorted(out)]


def test_every_number_of_the_table_is_recomputed_from_the_csv_alone(runs, tmp_path):
    out = tmp_path / "reports"
    write_report([runs], out)
    table = _table((out / "privacy_utility.md").read_text())
    assert _recompute_table(out / "per_image.csv") == table
    with (out / "per_image.csv").open(newline="") as fh:
        first = next(csv.DictReader(fh))
    assert (first["setting"], first["attacker"], first["attacker_name"], first["round"], first["victim_id"],
            first["label"]) == ("fp32", "non-adaptive", "ggl-l2", "3", "100", "0")
    assert first["fed_run"] == "fed-fp32/20250101-000000"  # recorded by the attack, not read off a path


def test_from_csv_rebuilds_the_same_table_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main([str(runs), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("report: 4 points (n = 2 images each") and str(out) in line
    assert "most leakage: fp32 round 3 ggl-l2" in line and "next: python -m ggl.report --from-csv" in line
    again = tmp_path / "again"
    assert main(["--from-csv", str(out / "per_image.csv"), "--out", str(again), "--metric", "reid"]) == 0
    md, md2 = (out / "privacy_utility.md").read_text(), (again / "privacy_utility.md").read_text()
    assert _table(md2) == _table(md) and _table(md2, "| comparison") == _table(md, "| comparison")
    assert _table(md2, HEAD) == _table(md, HEAD)
    assert (again / "per_image.csv").read_text() == (out / "per_image.csv").read_text()
    for name in ("privacy_utility.png", "reconstructions.png"):
        assert (again / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_seeds_pool_into_one_point(tmp_path):
    root = tmp_path / "runs"
    for seed, acc, psnr in ((0, 0.8, [20.0, 22.0]), (1, 0.9, [24.0, 26.0])):
        fed = _fed(root, f"fed-s{seed}", "20250101-000000", [], acc, 1e6, 1.0, seed=seed)
        _attack(root, f"attack-s{seed}", "20250101-000100", fed, "fp32", False, psnr, [0.8, 0.9], seed=seed)
    write_report([root], tmp_path / "reports")
    rows = _table((tmp_path / "reports" / "privacy_utility.md").read_text())
    # the CI resamples victims within each federation seed (the seeds keep their 2 victims each)
    want = stratified_mean_ci([[20.0, 22.0], [24.0, 26.0]]).fmt()
    assert want != mean_ci([20.0, 22.0, 24.0, 26.0]).fmt()
    assert len(rows) == 1 and rows[0][4] == "0.850" and rows[0][6] == want
    assert rows[0][15:17] == ["4", "2"]


def test_old_results_files_are_still_read(tmp_path):
    root = tmp_path / "runs"
    fed = _fed(root, "fed-fp32", "20250101-000000", [], 0.9, 1.0e6, 1.0)
    _attack(root, "attack-fp32", "20250101-000200", fed, "fp32", False, [20.0, 22.0], [0.8, 0.9], old=True)
    write_report([root], tmp_path / "reports")
    row = _table((tmp_path / "reports" / "privacy_utility.md").read_text())[0]
    # label acc from the old summary; the old baseline is the random prior sample; no re-identification
    assert row[8] == "–" and row[11] == "100%" and row[12] == f"{mean_ci([10.0, 12.0]).fmt()} (prior sample)"
    assert row[13] == mean_ci([10.0, 10.0]).fmt()


def test_dp_epsilon_of_the_federation_is_in_the_table(tmp_path):
    chain = [{"name": "clip", "max_norm": 0.25}, {"name": "noise", "noise_multiplier": 1.0, "delta": 1e-5}]
    fed = _fed(tmp_path / "runs", "fed-dp", "20250101-000000", chain, 0.5, 1e6, 1.0,
               privacy={"epsilon": 7.25, "delta": 1e-5, "noise_multiplier": 1.0})
    _attack(tmp_path / "runs", "attack-dp", "20250101-000100", fed, "clip0.25+nm1", False, [11.0, 13.0], [0.5, 0.5])
    write_report([tmp_path / "runs"], tmp_path / "reports")
    rows = _table((tmp_path / "reports" / "privacy_utility.md").read_text())
    assert [(r[0], r[4], r[19]) for r in rows] == [("clip0.25+nm1", "0.500", "7.25 (1e-05)")]


def test_attack_paired_after_the_runs_folder_moved(runs, tmp_path):
    moved = tmp_path / "elsewhere"
    runs.rename(moved)  # attack.source paths now point nowhere: the recorded federation still pairs them
    points = build_points(collect([moved]).pairs)
    assert [(p.key.defense, p.key.attacker, p.fed.test_acc) for p in points] == [
        ("fp32", "ggl-l2", 0.9), ("q4", "best per victim", 0.85), ("q4", "ggl-l2", 0.85), ("q4", "ggl-l2-adaptive", 0.85)]


def test_malformed_results_are_reported_by_path_and_skipped(runs, tmp_path, capsys):
    broken = _write(runs / "fed-q2" / "20250101-000600" / "results.json", '{"config": {"task": "fedavg"}, "fin')
    wrong = _write(runs / "attack-q2" / "20250101-000700" / "results.json",
                   {"config": {"attack": {"source": "x", "adaptive": False}}, "settings": ["q2"],
                    "per_image": [{"setting": "q2", "psnr": "high"}], "summary": {"q2": {"n_images": 8}}})
    ancient = _write(runs / "attack-q1" / "20250101-000800" / "results.json",
                     {"config": {"attack": {"source": "x", "adaptive": False}}, "settings": ["q1"],
                      "summary": {"q1": {"psnr_mean": 10.0, "n_images": 8}}})
    out = tmp_path / "reports"
    assert main([str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {broken}:" in err and f"skipped {wrong}: per_image[0].psnr = 'high' is not a number" in err
    assert f"skipped {ancient}: no 'records' and no 'per_image' rows" in err
    md = (out / "privacy_utility.md").read_text()
    assert str(broken) in md and str(wrong) in md
    assert len(_table(md)) == 4  # the good runs are all still there (3 attacks + q4's worst case)


def test_missing_folder_or_csv_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    assert main(["--from-csv", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.csv" in err and "\n" not in err
    bad = _write(tmp_path / "other.csv", "a,b\n1,2\n")
    assert main(["--from-csv", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"{bad}: not a ggl per-image CSV" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_defense_families_and_dodge():
    assert [defense_family(l) for l in ("fp32", "q4", "q4-stochastic-global", "clip0.25+nm0.1", "top0.01-ef",
                                        "sign")] == ["fp32", "quantize", "quantize", "clip+noise", "top-k", "sign"]
    xs = dodge([0.895, 0.895, 0.895, 0.5], 0.01)
    assert xs[3] == 0.5 and sorted(xs[:3]) == pytest.approx([0.885, 0.895, 0.905])


def test_sweep_finish_line_names_the_folder_the_key_numbers_and_the_next_command(runs):
    from ggl.sweep.main import finish_line
    from ggl.sweep.plan import GridPoint as Point, Job

    def point(setting, fed, attacks):
        p = Point(params={}, setting=setting, fed=Job("fed", setting, f"fed-{setting}", "x", [], done_dir=fed))
        p.attacks = [Job("attack", setting, a.parent.name, "x", [], done_dir=a) for a in attacks]
        return p

    fp32 = runs / "fed-fp32" / "20250101-000000"
    q4 = runs / "fed-q4" / "20250101-000100"
    points = [point("fp32", fp32, [runs / "attack-fp32" / "20250101-000200"]),
              point("q4", q4, [runs / "attack-q4" / "20250101-000300", runs / "attack-q4-adaptive" / "20250101-000400"])]
    summary = {"ran": ["a"], "skipped": ["b", "c"], "failed": [], "wall_seconds": 12.0}
    line = finish_line(summary, points)
    assert line.startswith("sweep: 1 jobs run, 2 skipped (done before), 0 failed, 12 s -> ")
    assert f"-> {runs} (4 points); most leakage: fp32 round 3 ggl-l2 PSNR {mean_ci([8.0, 8.0]).fmt()} dB" in line
    assert "re-id top-1 0.50 (chance 0.100)" in line and line.endswith(f"; next: python -m ggl.report {runs}")


def test_a_federation_that_dropped_clients_is_flagged_also_from_the_csv(tmp_path):
    """A defence bug or crashing clients must not pass for a defence that "does not learn"."""
    fed = _fed(tmp_path / "runs", "fed-q4", "20250101-000000", [Q4], 0.1, 2.5e5, 8.0, failed=7)
    _attack(tmp_path / "runs", "attack-q4", "20250101-000100", fed, "q4", False, [11.0, 13.0], [0.5, 0.5])
    out = tmp_path / "reports"
    write_report([tmp_path / "runs"], out)
    assert "**Warning:**" in (out / "privacy_utility.md").read_text() and "q4 (non-adaptive): 7" in (
        out / "privacy_utility.md").read_text()
    assert main(["--from-csv", str(out / "per_image.csv"), "--out", str(tmp_path / "again")]) == 0
    assert "q4 (non-adaptive): 7" in (tmp_path / "again" / "privacy_utility.md").read_text()


def test_wandb_agent_run_gets_each_attackers_numbers_without_overwriting(runs, monkeypatch):
    """Under `wandb agent`, the sweep's own run gets one summary key per attacker (and worst case)."""
    import wandb

    from ggl.sweep.main import _log_agent_run
    from ggl.sweep.plan import GridPoint as Point, Job

    class FakeRun:
        def __init__(self):
            self.summary, self.logged = {}, []

        def log(self, data):
            self.logged.append(data)

        def finish(self):
            pass

    run = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda **kw: run)
    q4 = runs / "fed-q4" / "20250101-000100"
    p = Point(params={"defenses": [Q4]}, setting="q4", fed=Job("fed", "q4", "fed-q4", "x", [], done_dir=q4))
    p.attacks = [Job("attack", "q4", a.parent.name, "x", [], done_dir=a)
                 for a in (runs / "attack-q4" / "20250101-000300", runs / "attack-q4-adaptive" / "20250101-000400")]
    _log_agent_run(p)
    s = run.summary
    assert s["ggl-l2/round3/psnr_mean"] == 16.0 and s["ggl-l2-adaptive/round3/psnr_mean"] == 18.0
    assert s["best per victim/round3/psnr_mean"] == 18.0 and s["test_acc"] == 0.85
