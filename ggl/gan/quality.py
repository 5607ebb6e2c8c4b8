"""Quality of a GAN prior, measured offline: a domain classifier trained on the public split.

Inception weights cannot be downloaded here, so both metrics use a small CNN trained on the same
public images the GAN saw (its held-out accuracy is reported beside them):

- **FID** (torchmetrics' ``FrechetInceptionDistance`` on the classifier's penultimate features), real =
  the public split; the reference scores real held-out (test) images, as many and with the same class
  mix, against the same public features, so "gen" and "real" numbers compare. Lower is better.
- **class agreement** (conditional priors): the share of samples ``G(z, y)`` the classifier assigns
  to ``y``; the reference is the classifier's accuracy on the real held-out images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ggl.core.seeding import generator
from ggl.gan.module import translate

STREAM_CLASSIFIER = 11
STREAM_QUALITY = 12


class DomainClassifier(nn.Module):
    """Small CNN for (N, C, 32, 32) images in [0, 1]; ``features`` are its penultimate activations."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.arch = {"channels": channels, "num_classes": num_classes, "width": width, "feature_dim": feature_dim}
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(4 * w * 16, feature_dim), nn.ReLU(),
        )
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_features(self) -> int:
        return self.arch["feature_dim"]

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.body(x)))


class _FeatureExtractor(nn.Module):
    """What torchmetrics' FID calls: images in [0, 1] -> penultimate features; always in eval mode."""

    def __init__(self, classifier: DomainClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, seed: int = 0, epochs: int = 10,
                     batch_size: int = 128, lr: float = 2e-3, device: str | torch.device = "cpu",
                     width: int = 32) -> DomainClassifier:
    """Train the domain classifier on (public) images; seeded, so the same inputs give the same net."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(images.shape[1], num_classes, width=width).to(device)
    gen = generator(seed, STREAM_CLASSIFIER)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(labels) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)

    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=gen)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                x = translate(images[idx], gen, 2).to(device)
                loss = F.cross_entropy(model(x), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def predict(classifier: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


@dataclass
class QualityReference:
    """The real side of every quality measurement, computed once per run."""

    classifier: DomainClassifier
    fid: "object"                 # FrechetInceptionDistance holding the public split's features
    heldout_labels: Tensor        # class mix the generated samples copy
    metrics: Dict[str, float]     # real-vs-real FID and the classifier's held-out accuracy


def _new_fid(classifier: DomainClassifier):
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_FeatureExtractor(classifier), reset_real_features=False,
                                   normalize=True)
    return fid.to(next(classifier.parameters()).device)


@torch.no_grad()
def _update(fid, images: Tensor, real: bool, batch_size: int = 500) -> None:
    device = fid.device
    for i in range(0, len(images), batch_size):
        fid.update(images[i:i + batch_size].to(device), real=real)


@torch.no_grad()
def build_reference(classifier: DomainClassifier, public_images: Tensor, heldout_images: Tensor,
                    heldout_labels: Tensor) -> QualityReference:
    """Fit the FID's real statistics on the public split; score real held-out images as the reference."""
    fid = _new_fid(classifier)
    _update(fid, public_images, real=True)
    _update(fid, heldout_images, real=False)
    real_fid = float(fid.compute())
    fid.reset()  # keeps the public (real) features, drops the held-out ones
    acc = float((predict(classifier, heldout_images) == heldout_labels).float().mean())
    return QualityReference(classifier, fid, heldout_labels.clone(), {
        "fid_real_vs_real": real_fid, "class_agreement_real": acc,
        "num_heldout": int(len(heldout_labels)), "num_public": int(len(public_images)),
    })


@torch.no_grad()
def sample(G: nn.Module, labels: Optional[Tensor], n: int, seed: int, batch_size: int = 500) -> Tensor:
    """``n`` samples from ``G`` with seeded latents (and the given labels when conditional), on CPU."""
    device = next(G.parameters()).device
    z = torch.randn(n, G.latent_dim, generator=generator(seed, STREAM_QUALITY))
    out = []
    for i in range(0, n, batch_size):
        y = labels[i:i + batch_size].to(device) if G.conditional else None
        out.append(G(z[i:i + batch_size].to(device), y).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate_generator(G: nn.Module, ref: QualityReference, seed: int = 0) -> Dict[str, float]:
    """FID against the public split and (conditional) class agreement, for ``len(heldout)`` samples."""
    was_training = G.training
    G.eval()
    labels = ref.heldout_labels
    fake = sample(G, labels, len(labels), seed)
    ref.fid.reset()
    _update(ref.fid, fake, real=False)
    out = {"fid": float(ref.fid.compute())}
    ref.fid.reset()
    if G.conditional:
        out["class_agreement"] = float((predict(ref.classifier, fake) == labels).float().mean())
    G.train(was_training)
    return out


def classifier_state(classifier: DomainClassifier) -> dict:
    return {"format": "ggl-domain-classifier", "version": 1, "arch": dict(classifier.arch),
            "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()}}


def classifier_from_state(blob: dict) -> DomainClassifier:
    model = DomainClassifier(**blob["arch"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def seeded_subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` indices out of ``n_total`` (all of them, in order, when ``n >= n_total``)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng([seed, STREAM_QUALITY]).choice(n_total, n, replace=False))
