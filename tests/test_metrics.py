"""Scores of the evaluator: PSNR/SSIM (torchmetrics), MSE, feature MSE, LPIPS only from local weights."""
from __future__ import annotations

import math

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
