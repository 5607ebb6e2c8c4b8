"""ggl.report on a folder of synthetic results.json files with fixed numbers: the table rows, the
pairing of attacks with their federations, newest-wins, the figures, and malformed files skipped."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ggl.report import collect, main, reconstruction_rows, write_report

Q4 = {"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _fed(root: Path, name: str, stamp: str, defenses, acc: float, bits: float, ratio: float,
         privacy=None) -> Path:
    run = root / name / stamp
    (run / "audit" / "observations").mkdir(parents=True)
    _write(run / "results.json", {
        "config": {"task": "fedavg", "seed": 0, "data": {"name": "digits"}, "model": {"name": "cnn"},
                   "fl": {"rounds": 2}, "defenses": defenses},
        "final": {"test_acc": acc, "test_loss": 1.0, "rounds": 2, "uplink_bits_per_round": bits,
                  "compression_ratio": ratio, "rejected_updates": 0, "failed_clients": 0, "privacy": privacy},
        "history": [], "wall_seconds": 3.0})
    return run


def _images(path: Path, recon: float, originals: float = 1.0, n: int = 2) -> None:
    """The tensors attack.py saves per setting (n images of 1x8x8, constant values)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"originals": torch.full((n, 1, 8, 8), originals), "reconstructions": torch.full((n, 1, 8, 8), recon),
                "prior_only": torch.zeros(n, 1, 8, 8)}, path)


def _attack(root: Path, name: str, stamp: str, source: Path, setting: str, adaptive: bool, psnr, ssims,
            base=(10.0, 12.0), originals: float = 1.0) -> Path:
    run = root / name / stamp
    rows = [{"setting": setting, "observation": f"r0000_b{i:03d}", "image": 0, "dataset_index": 100 + i,
             "psnr": p, "ssim": s, "baseline_psnr": base[i], "baseline_ssim": 0.5}
            for i, (p, s) in enumerate(zip(psnr, ssims))]
    summary = {"psnr_mean": float(np.mean(psnr)), "psnr_std": float(np.std(psnr)), "ssim_mean": float(np.mean(ssims)),
               "lpips_mean": None, "label_acc": 1.0, "baseline_psnr_mean": float(np.mean(base)),
               "baseline_ssim_mean": 0.5, "n_images": len(psnr), "wall_seconds": 1.0}
    config = {"task": "attack", "seed": 0, "attack": {"source": str(source), "adaptive": adaptive}}
    _write(run / "results.json", {"config": config, "settings": [setting], "per_image": rows,
                                  "summary": {setting: summary}, "wall_seconds": 1.0})
    # the per-setting copy attack.py writes too: must not be counted twice
    _write(run / setting / "results.json", {"config": {**config, "setting": setting}, "per_image": rows,
                                            "summary": summary})
    _images(run / setting / "images.pt", recon=psnr[0] / 100, originals=originals)
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    fp32 = _fed(root, "fed-fp32", "20250101-000000", [], 0.9, 1.0e6, 1.0)
    q4 = _fed(root, "fed-q4", "20250101-000100", [Q4], 0.85, 2.5e5, 8.0)
    _attack(root, "attack-fp32", "20250101-000200", fp32, "fp32", False, [20.0, 22.0], [0.8, 0.9])
    # an older attack of the same setting and attacker: the newer one wins
    _attack(root, "attack-q4", "20250101-000250", q4, "q4", False, [30.0, 30.0], [0.99, 0.99])
    _attack(root, "attack-q4", "20250101-000300", q4, "q4", False, [15.0, 17.0], [0.6, 0.7])
    _attack(root, "attack-q4-adaptive", "20250101-000400", q4 / "audit", "q4-adaptive", True, [18.0, 18.0],
            [0.75, 0.75])
    _write(root / "gan_mnist" / "20250101-000500" / "results.json", {"config": {"task": "gan"}, "metrics": {}})
    return root


def _table(md: str):
    lines = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| setting")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def test_report_rows_pairing_and_figures(runs, tmp_path):
    out = tmp_path / "reports"
    found = write_report([runs], out)
    rows = _table((out / "privacy_utility.md").read_text())
    # sorted by accuracy (best first), then setting, non-adaptive before adaptive
    assert rows == [
        ["fp32", "non-adaptive", "0.900", "21.00 ± 1.00", "0.850 ± 0.050", "–", "100%", "11.00", "2",
         "1.00 Mbit", "1.0×", "–", "2", "digits"],
        ["q4", "non-adaptive", "0.850", "16.00 ± 1.00", "0.650 ± 0.050", "–", "100%", "11.00", "2",
         "250.00 kbit", "8.0×", "–", "2", "digits"],
        ["q4", "adaptive", "0.850", "18.00 ± 0.00", "0.750 ± 0.000", "–", "100%", "11.00", "2",
         "250.00 kbit", "8.0×", "–", "2", "digits"],
    ]
    assert found["skipped"] == [] and found["ignored"] == 1  # the GAN run is not an error
    assert found["superseded"] == 1  # the older q4 attack
    md = (out / "privacy_utility.md").read_text()
    assert "PSNR 11.00 ± 1.00 dB" in md  # prior-only band over the 6 attacked images (10, 12 each)
    for name in ("privacy_utility.png", "reconstructions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the victims once, then each row of the table, then the prior-only images
    figure = reconstruction_rows(found["rows"])
    assert [label for label, _ in figure] == ["original", "fp32, non-adaptive: 21.0 dB", "q4, non-adaptive: 16.0 dB",
                                              "q4, adaptive: 18.0 dB", "prior only: 11.0 dB"]
    assert [float(images.mean()) for _, images in figure] == pytest.approx([1.0, 0.20, 0.15, 0.18, 0.0])


def test_reconstructions_repeat_the_originals_where_the_victims_change_and_name_rows_without_images(tmp_path):
    root = tmp_path / "runs"
    fp32 = _fed(root, "fed-fp32", "20250101-000000", [], 0.9, 1.0e6, 1.0)
    q4 = _fed(root, "fed-q4", "20250101-000100", [Q4], 0.85, 2.5e5, 8.0)
    _attack(root, "attack-fp32", "20250101-000200", fp32, "fp32", False, [20.0, 22.0], [0.8, 0.9])
    _attack(root, "attack-q4", "20250101-000300", q4, "q4", False, [15.0, 17.0], [0.6, 0.7], originals=0.5)
    adaptive = _attack(root, "attack-q4-adaptive", "20250101-000400", q4, "q4-adaptive", True, [18.0, 18.0],
                       [0.75, 0.75])
    (adaptive / "q4-adaptive" / "images.pt").unlink()  # an attack run from before images were saved
    out = tmp_path / "reports"
    found = write_report([root], out)
    assert [label for label, _ in reconstruction_rows(found["rows"])] == [
        "original", "fp32, non-adaptive: 21.0 dB", "original", "q4, non-adaptive: 16.0 dB", "prior only: 11.0 dB"]
    assert "Not in the reconstructions figure (their attack runs have no images.pt; rerun those attacks): " \
           "q4 (adaptive)." in (out / "privacy_utility.md").read_text()


def test_dp_epsilon_of_the_federation_is_in_the_table(tmp_path):
    chain = [{"name": "clip", "max_norm": 0.25}, {"name": "noise", "noise_multiplier": 1.0, "delta": 1e-5}]
    fed = _fed(tmp_path / "runs", "fed-dp", "20250101-000000", chain, 0.5, 1e6, 1.0,
               privacy={"epsilon": 7.25, "delta": 1e-5, "noise_multiplier": 1.0})
    _attack(tmp_path / "runs", "attack-dp", "20250101-000100", fed, "clip0.25+nm1", False, [11.0, 13.0], [0.5, 0.5])
    write_report([tmp_path / "runs"], tmp_path / "reports")
    rows = _table((tmp_path / "reports" / "privacy_utility.md").read_text())
    assert [(r[0], r[2], r[11]) for r in rows] == [("clip0.25+nm1", "0.500", "7.25 (1e-05)")]


def test_attack_paired_after_the_runs_folder_moved(runs, tmp_path):
    moved = tmp_path / "elsewhere"
    runs.rename(moved)  # attack.source paths now point nowhere: pairing by <name>/<timestamp>
    rows = collect([moved])["rows"]
    assert [(r["setting"], r["attacker"], r["test_acc"]) for r in rows] == [
        ("fp32", "non-adaptive", 0.9), ("q4", "non-adaptive", 0.85), ("q4", "adaptive", 0.85)]


def test_malformed_results_are_reported_by_path_and_skipped(runs, tmp_path, capsys):
    broken = _write(runs / "fed-q2" / "20250101-000600" / "results.json", '{"config": {"task": "fedavg"}, "fin')
    wrong = _write(runs / "attack-q2" / "20250101-000700" / "results.json",
                   {"config": {"attack": {"source": "x", "adaptive": False}}, "settings": ["q2"],
                    "summary": {"q2": {"psnr_mean": "high", "n_images": 8}}})
    out = tmp_path / "reports"
    assert main([str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {broken}:" in err and f"skipped {wrong}: summary[q2].psnr_mean = 'high' is not a number" in err
    md = (out / "privacy_utility.md").read_text()
    assert str(broken) in md and str(wrong) in md
    assert len(_table(md)) == 3  # the good runs are all still there


def test_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
