"""Reconstruction scores (evaluator side). ``METRICS`` is the one table of them: adding a metric is one
entry ``name: Metric(fn, direction)``; the evaluator, the baselines' leakage, the records, the CSV
columns and the summary all derive from it. Functions take image batches (N, C, H, W) in [0, 1] and
return one value per image.

* PSNR and SSIM come from torchmetrics (``data_range=1``); feature MSE compares the attacked model's
  penultimate features (the input of its last linear layer).
* LPIPS comes from the ``lpips`` package, whose backbone loads torchvision's ImageNet weights. Nothing
  downloads at run time: without the weights file in torch hub's cache the score is ``None``
  (``LPIPSScorer.reason`` says why).
* Re-identification (``reid_*``) is scored against a gallery by ``ggl.audit.reid`` (``fn=None``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

from ggl.audit.reid import reid_keys

HIGHER, LOWER = 1, -1   # Metric.direction: a higher (lower) score = closer to the victim = more leakage

# the torchvision checkpoint each lpips backbone loads (torchvision.models.*_Weights.IMAGENET1K_V1)
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def mse(x: Tensor, y: Tensor) -> Tensor:
    return ((x.float() - y.float()) ** 2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(x.float().clamp(0, 1), y.float(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(x.float().clamp(0, 1), y.float(), data_range=1.0,
                                               reduction="none")


@torch.no_grad()
def features(model: nn.Module, x: Tensor) -> Tensor:
    """The input of ``model``'s last ``nn.Linear`` (its penultimate features), flattened."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return model(x).flatten(1)
    out = []
    handle = linears[-1].register_forward_hook(lambda mod, inp, res: out.append(inp[0].detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0].flatten(1)


def feature_mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((features(model, x.float()) - features(model, y.float())) ** 2).mean(1)


class LPIPSScorer:
    """LPIPS when its backbone weights are on disk, else ``None`` with ``reason`` (never downloads)."""

    def __init__(self, net: str = "alex"):
        self.net = net
        self.model = None
        self.reason: Optional[str] = None
        weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES.get(net, "?")
        if net not in LPIPS_BACKBONE_FILES:
            self.reason = f"unknown LPIPS backbone '{net}'"
        elif not weights.is_file():
            self.reason = (f"LPIPS backbone weights not on disk ({weights}); put torchvision's "
                           f"{LPIPS_BACKBONE_FILES[net]} there to enable LPIPS")
        else:
            try:
                import lpips

                self.model = lpips.LPIPS(pretrained=True, net=net, verbose=False).eval()
            except Exception as exc:  # a corrupt file, an lpips/torchvision mismatch: report, do not crash
                self.reason = f"LPIPS could not be built ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})"

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> Optional[Tensor]:
        if self.model is None:
            return None
        x, y = x.float().clamp(0, 1), y.float()
        if x.shape[1] == 1:  # the backbone takes RGB
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        return self.model(x, y, normalize=True).flatten()


@dataclass(frozen=True)
class Inputs:
    """What a metric may use besides the two batches: the attacked model and the LPIPS scorer."""
    model: Optional[nn.Module] = None
    lpips: Optional[LPIPSScorer] = None


@dataclass(frozen=True)
class Metric:
    # (reconstructions, originals, Inputs) -> one score per image (None: not available);
    # None: scored elsewhere (re-identification, by the gallery)
    fn: Optional[Callable[[Tensor, Tensor, Inputs], Optional[Tensor]]]
    direction: int                      # HIGHER or LOWER: which way is more leakage


def _lpips(x: Tensor, y: Tensor, inputs: Inputs) -> Optional[Tensor]:
    return inputs.lpips(x, y) if inputs.lpips is not None else None


def _feature_mse(x: Tensor, y: Tensor, inputs: Inputs) -> Optional[Tensor]:
    return feature_mse(inputs.model, x, y) if inputs.model is not None else None


# name -> Metric, in CSV column order
METRICS: Dict[str, Metric] = {
    "psnr": Metric(lambda x, y, _: psnr(x, y), HIGHER),
    "ssim": Metric(lambda x, y, _: ssim(x, y), HIGHER),
    "lpips": Metric(_lpips, LOWER),
    "mse": Metric(lambda x, y, _: mse(x, y), LOWER),
    "feature_mse": Metric(_feature_mse, LOWER),
    **{key: Metric(None, HIGHER) for key in reid_keys()},
}


def direction(metric: str) -> int:
    """+1 when a higher ``metric`` is more leakage, -1 when a lower one is, 0 for an unknown name."""
    entry = METRICS.get(metric)
    return entry.direction if entry is not None else 0


def score_images(recon: Tensor, truth: Tensor, inputs: Inputs) -> Dict[str, Optional[Tensor]]:
    """{metric: per-image scores or None} of every ``METRICS`` entry with a function."""
    return {name: m.fn(recon, truth, inputs) for name, m in METRICS.items() if m.fn is not None}
