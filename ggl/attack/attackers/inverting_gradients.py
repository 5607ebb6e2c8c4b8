"""``inverting-gradients``: the pixel-space attack of Geiping et al. (NeurIPS 2020), with no prior.

Adam on the pixels, boxed in [0, 1], minimising ``(1 - cos(update(x), observed)) + tv_weight * TV(x)``
(the project's cosine per layer, averaged over layers, where the paper takes one over all layers;
``TV`` = mean |horizontal| + mean |vertical difference|). As in the paper: signed gradients, the
learning rate divided by 10 at 3/8, 5/8 and 7/8 of the steps, ``restarts`` random starts in one batch
(the lowest final loss wins). Labels from ``infer_labels`` without prior probes. Trial updates are
GGL's (``GGLObjective``) with the identity as the generator. ``inverting-gradients-adaptive``
re-applies the observed defence (``DefenseModel``, straight-through) as ``ggl-cosine-adaptive`` does,
so a defence is not credited with what an attacker that ignores it cannot see.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ggl.attack import GGLObjective, SearchResult, infer_labels
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker
from ggl.core.checks import count
from ggl.core.errors import ConfigError


class PixelParametrisation(nn.Module):
    """The 'generator' of a prior-free attack: the latent vector *is* the image (C*H*W values)."""
    conditional = False
    num_classes = 0

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.channels, self.image_size = channels, image_size
        self.latent_dim = channels * image_size * image_size

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        return z.view(-1, self.channels, self.image_size, self.image_size)


def total_variation(x: Tensor) -> Tensor:
    """(P,) anisotropic TV of candidate batches x (P, B, C, H, W): mean |dx| + mean |dy| per candidate."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


@register("inverting-gradients", order=60, adaptive=False)
@register("inverting-gradients-adaptive", order=70, adaptive=True)
@dataclass
class InvertingGradients(Attacker):
    adaptive: bool = False      # fixed by the name: re-apply the observed defence to the trial updates
    steps: int = 1000           # Adam steps on the pixels
    lr: float = 0.1             # Adam learning rate (divided by 10 at 3/8, 5/8, 7/8 of the steps)
    tv_weight: float = 1e-2     # weight of the total variation; 0 = none
    restarts: int = 4           # random starts in one batch; the lowest final loss wins
    signed: bool = True         # feed Adam sign(gradient), as the paper does

    loss: ClassVar[str] = "cosine+tv"
    search: ClassVar[str] = "adam-pixels"
    uses_prior: ClassVar[bool] = False

    @property
    def models(self) -> str:  # type: ignore[override]
        return "adaptive" if self.adaptive else "none"

    def check(self, key: str) -> None:
        for k in ("steps", "restarts"):
            count(getattr(self, k), f"{key}.{k}", f"attacker_options.InvertingGradients.{k}")
        if not self.lr > 0:
            raise ConfigError(f"config key '{key}.lr' = {self.lr} must be > 0")
        if not self.tv_weight >= 0:
            raise ConfigError(f"config key '{key}.tv_weight' = {self.tv_weight} must be >= 0")

    def units(self, cfg) -> int:
        return self.steps

    def objective(self, obs, G, cfg, labels, model) -> GGLObjective:
        """The cosine objective of ``G``'s images (``PixelParametrisation`` in the search), adaptive or not; a
        subclass that matches through the defence's public grid replaces it (``grid_observed.py``)."""
        return GGLObjective(obs, G, labels, loss="cosine", adaptive=self.adaptive, evaluation="batched", model=model)

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        start = time.perf_counter()
        model = model if model is not None else obs.build_model()
        if labels is None:
            labels = infer_labels(obs, model, None)
        pixels = PixelParametrisation(obs.channels, obs.image_size)
        objective = self.objective(obs, pixels, cfg, labels, model)
        objective.check_fits(self.restarts, f"attack.attacker_options.{self.name}.restarts")
        dtype = next(model.parameters()).dtype
        gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
        x = torch.rand(self.restarts, objective.dim, generator=gen, dtype=dtype)
        x = x.to(next(model.parameters()).device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
        curve, best = [], float("inf")

        def losses(z: Tensor) -> Tensor:
            out = objective(z)
            if self.tv_weight:
                out = out + self.tv_weight * total_variation(objective.images(z))
            return out

        for _ in range(self.steps):
            value = losses(x)
            opt.zero_grad(set_to_none=True)
            value.sum().backward()
            if self.signed:
                x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            best = min(best, float(value.detach().min()))
            curve.append(best)
            if tick:
                tick(1)
        with torch.no_grad():
            final = losses(x)
        i = int(torch.nan_to_num(final, nan=float("inf")).argmin())
        images = objective.images(x[i:i + 1].detach())[0]
        return SearchResult(z=x[i].detach().view(objective.batch, -1), images=images, labels=objective.labels.clone(),
                            loss=float(final[i]), curve=curve, evaluations=objective.evaluations,
                            seconds=time.perf_counter() - start)
