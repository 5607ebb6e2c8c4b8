"""Reconstruction scores (evaluator side): PSNR, SSIM, LPIPS, MSE, feature MSE in the attacked model.

All functions take image batches (N, C, H, W) in [0, 1] and return one value per image.

* PSNR and SSIM come from torchmetrics (``data_range=1``).
* LPIPS comes from the ``lpips`` package, whose backbone (AlexNet by default) loads torchvision's
  ImageNet weights. Nothing may download at run time, so ``LPIPSScorer`` looks for the weights file in
  torch hub's cache first; when it is absent the score is ``None`` and ``reason`` says why.
* Feature MSE: the mean squared difference of the attacked model's penultimate features (the input
  of its last linear layer) for the original and the reconstruction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

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
