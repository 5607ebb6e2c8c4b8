"""Label-only baselines: what an attacker who learned only the label (nothing else from the update) can
show. A reconstruction leaks only what it adds on top of the strongest of them.

Strongest first (on the shipped report's victims, PSNR): the prior's class mean (``prior_mean``: G(z, y)
averaged over ``PRIOR_MEAN_SAMPLES`` seeded z), the public split's class mean (``public_mean``) and one
random prior sample of the label (``prior_sample``). Each is built only from the prior or public images
(``tests/test_leakage.py`` changes the private images and checks nothing moves).

Leakage of an image, per metric, is the reconstruction's score minus the best baseline's score *on
that image* (sign-flipped for lower-is-better metrics, so positive = the attack beat every label-only
guess): conservative, the baseline gets the best of three tries per victim.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ggl.audit.metrics import direction
from ggl.core.seeding import derived_seed

BASELINES = ("prior_mean", "public_mean", "prior_sample")
PRIOR_MEAN_SAMPLES = 500

@torch.no_grad()
def prior_class_means(G: nn.Module, num_classes: int, samples: int = PRIOR_MEAN_SAMPLES, seed: int = 0,
                      batch: int = 500) -> Tensor:
    """(num_classes, C, H, W): the mean of G(z, y) over ``samples`` seeded z per class (one mean for
    every class when the prior is unconditional)."""
    gen = torch.Generator().manual_seed(derived_seed(seed, 0xC1A55))
    z = torch.randn(samples, int(G.latent_dim), generator=gen)
    device = next((p.device for p in G.parameters()), torch.device("cpu"))
    conditional = getattr(G, "conditional", False)

    def mean_of(y: Optional[int]) -> Tensor:
        total = None
        for i in range(0, samples, batch):
            zb = z[i:i + batch].to(device)
            yb = torch.full((len(zb),), y, dtype=torch.long, device=device) if y is not None else None
            s = G(zb, yb).double().sum(0).cpu()
            total = s if total is None else total + s
        return (total / samples).float()

    if not conditional:
        return mean_of(None).unsqueeze(0).repeat(num_classes, 1, 1, 1)
    return torch.stack([mean_of(c) for c in range(num_classes)])


def public_class_means(public_images: Tensor, public_labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes, C, H, W): the mean public image of each class (the overall public mean for a
    class absent from the public split)."""
    x = public_images.double()
    overall = x.mean(0)
    out = []
    for c in range(num_classes):
        sel = public_labels == c
        out.append(x[sel].mean(0) if bool(sel.any()) else overall)
    return torch.stack(out).float()


@torch.no_grad()
def prior_sample(G: nn.Module, labels: Tensor, seed: int) -> Tensor:
    """One random latent per image of the given labels through the prior (the baseline before)."""
    gen = torch.Generator().manual_seed(derived_seed(seed, 0xBA5E))
    z = torch.randn(len(labels), int(G.latent_dim), generator=gen)
    return G(z, labels if getattr(G, "conditional", False) else None)


class LabelOnly:
    """The label-only images of a batch of inferred labels, built from the prior and the public split."""

    def __init__(self, G: nn.Module, public_images: Tensor, public_labels: Tensor, num_classes: int,
                 seed: int = 0):
        self.G = G
        self.prior_means = prior_class_means(G, num_classes, seed=seed)
        self.public_means = public_class_means(public_images, public_labels, num_classes)

    def images(self, labels: Tensor, seed: int) -> Dict[str, Tensor]:
        """{baseline name: (B, C, H, W)} for the labels, strongest first."""
        labels = labels.long().cpu()
        return {"prior_mean": self.prior_means[labels], "public_mean": self.public_means[labels],
                "prior_sample": prior_sample(self.G, labels, seed).float().cpu()}


def leakage(metric: str, attack: Optional[float], baselines: Dict[str, Optional[float]]) -> Optional[float]:
    """The attack's score minus the best baseline's (sign-flipped for lower-is-better metrics); None
    when the attack or every baseline is missing, or the metric has no direction."""
    sign = direction(metric)
    known = [v for v in baselines.values() if v is not None]
    if attack is None or not known or sign == 0:
        return None
    best = max(known) if sign > 0 else min(known)
    return sign * (attack - best)


def best_baseline(metric: str, baselines: Dict[str, Optional[float]]) -> Optional[float]:
    sign = direction(metric)
    known = [v for v in baselines.values() if v is not None]
    if not known or sign == 0:
        return None
    return max(known) if sign > 0 else min(known)
