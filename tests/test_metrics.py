"""Scores of the evaluator: PSNR/SSIM (torchmetrics), MSE, feature MSE, LPIPS only from local weights."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ggl.audit import metrics
from ggl.models import build_model


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32, generator=g) * 0.8 + 0.1
    return x, x + torch.tensor([0.1, -0.05, 0.0]).view(3, 1, 1, 1)


def test_psnr_mse_known_values_per_image():
    x, y = _pair()
    m = metrics.mse(y, x)
    assert torch.allclose(m[:2], torch.tensor([0.01, 0.0025]), rtol=1e-4) and m[2] == 0
    p = metrics.psnr(y, x)
    assert p.shape == (3,)
    assert abs(p[0].item() - 20.0) < 1e-3 and abs(p[1].item() - 10 * math.log10(1 / 0.0025)) < 1e-3
    assert math.isinf(p[2].item()) or p[2].item() > 100


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    x, _ = _pair()
    s = metrics.ssim(x, x)
    assert torch.allclose(s, torch.ones(3), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (metrics.ssim(noisy, x) < 0.9).all()


def test_feature_mse_in_the_attacked_model():
    model = build_model("lenet", 1, 10, init="dlg", seed=0)
    x, y = _pair()
    f = metrics.feature_mse(model, y, x)
    assert f.shape == (3,) and f[0] > 0 and f[2] == 0
    assert metrics.features(model, x).shape == (3, 12 * 8 * 8)  # the last linear layer's input


def test_lpips_is_null_with_a_reason_when_the_backbone_is_not_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    scorer = metrics.LPIPSScorer("alex")
    assert not scorer.available
    assert "alexnet-owt-7be5be79.pth" in scorer.reason and str(tmp_path) in scorer.reason
    x, y = _pair()
    assert scorer(x, y) is None
    assert not (tmp_path / "empty_torch_home").exists()  # nothing was downloaded or created


def test_a_metric_is_one_table_entry_scored_compared_with_the_baselines_and_written(tmp_path, monkeypatch):
    """Register a throwaway metric in ``metrics.METRICS`` only: the evaluator scores it (attack and every
    baseline), leakage follows its direction, the summary averages it, the CSV has its columns and reads
    it back; gone again once the entry is removed."""
    from test_leakage import DATA_CFG, TAGS, _evaluator, _synthetic_data
    from _attack_fixtures import TinyPrior
    from ggl.audit.baselines import BASELINES
    from ggl.audit.evaluate import summarize
    from ggl.audit.tidy import csv_columns, read_csv, write_csv
    from ggl.audit.truth import GroundTruth

    def l1(x, y, inputs):
        return (x.float() - y.float()).abs().flatten(1).mean(1)

    columns = ["l1_gap", *(f"baseline_{b}_l1_gap" for b in BASELINES), "leakage_l1_gap"]
    with monkeypatch.context() as m:
        m.setitem(metrics.METRICS, "l1_gap", metrics.Metric(l1, metrics.LOWER))
        data, split = _synthetic_data()
        victims = torch.tensor([31, 44])
        truth_path = GroundTruth("obs", DATA_CFG, victims, data.labels[victims]).save(tmp_path / "gt.pt")
        recon = (data.images[victims] + 0.01).clamp(0, 1)
        recs, truth, *_ = _evaluator(data, split, tmp_path).evaluate(
            truth_path, "obs", recon, data.labels[victims], TinyPrior(num_classes=3), None, seed=0, tags=TAGS)
        for i, r in enumerate(recs):
            assert r.metrics["l1_gap"] == float(l1(recon[i:i + 1], truth[i:i + 1], None))
            best = min(r.baselines[b]["l1_gap"] for b in BASELINES)  # lower is closer
            assert r.leakage["l1_gap"] == -(r.metrics["l1_gap"] - best) > 0
        assert summarize(recs, 1.0, None)["l1_gap_mean"] is not None
        assert set(columns) <= set(csv_columns())
        back = read_csv(write_csv(tmp_path / "per_image.csv", [(r, None) for r in recs]))
        assert [r.metrics["l1_gap"] for r, _ in back] == [r.metrics["l1_gap"] for r in recs]
    assert not set(columns) & set(csv_columns()) and "l1_gap" not in metrics.METRICS


def test_metric_directions_come_from_the_table():
    from ggl.audit.baselines import leakage

    assert [metrics.direction(k) for k in ("psnr", "ssim", "lpips", "mse", "feature_mse")] == [1, 1, -1, -1, -1]
    assert metrics.direction("reid_top1_feature_class") == 1 and metrics.direction("unknown") == 0
    assert leakage("lpips", 0.2, {"prior_mean": 0.3, "public_mean": 0.5}) == pytest.approx(0.1)


def test_the_lpips_backbone_is_a_key_and_a_missing_one_says_which_file_where(tmp_path, monkeypatch):
    """attack.lpips_net picks lpips' backbone; without its torchvision weights in torch hub's cache LPIPS is
    None and the reason names that backbone's file and the folder (nothing is downloaded), and the report
    says why its LPIPS column is empty."""
    import torch

    from ggl.attack.schema import LPIPS_NETS
    from ggl.audit.metrics import LPIPS_BACKBONE_FILES, LPIPSScorer
    from ggl.config import load_config
    from ggl.core.errors import ConfigError

    assert set(LPIPS_NETS) == set(LPIPS_BACKBONE_FILES)  # the key's values are the scorer's backbones
    assert load_config("attack.yaml", ["attack.lpips_net=vgg"]).attack.lpips_net == "vgg"
    with pytest.raises(ConfigError, match="'attack.lpips_net' = 'resnet' is not one of alex, vgg, squeeze"):
        load_config("attack.yaml", ["attack.lpips_net=resnet"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for net in LPIPS_NETS:
        scorer = LPIPSScorer(net)
        assert scorer.model is None and scorer(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)) is None
        assert LPIPS_BACKBONE_FILES[net] in scorer.reason and str(tmp_path / "hub" / "checkpoints") in scorer.reason
    from ggl.report.build import report_from_csv  # the shipped per-image data has no LPIPS: the report says why

    report_from_csv(Path(__file__).resolve().parent.parent / "reports" / "per_image.csv", tmp_path / "report")
    assert "LPIPS `–`: not computed when the attack ran" in (tmp_path / "report" / "privacy_utility.md").read_text()
