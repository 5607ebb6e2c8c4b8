"""Identity leakage (evaluator side: uses the private split): does a reconstruction single out its victim?

The victim's rank in a gallery of private images is 1 + the number closer to the reconstruction than
the victim (ties count half: the expected rank under random tie-breaking), after Breaching's "image
identifiability precision". Galleries: ``all`` (the private split) and ``class`` (the victim's true
label's images: identity beyond the label). Spaces: ``pixel`` (Euclidean) and ``feature`` (cosine
distance of the penultimate features of the public-split domain classifier shipped beside the prior,
``<prior stem>_classifier.pt``), which sees the stroke style that PSNR misses.

Per image: ``reid_top1_<space>_<gallery>`` (1/(1+ties) when nothing is closer), ``reid_rr_<space>_<gallery>``
(1 / rank) and the gallery sizes. Chance (``chance``): top-1 = 1/M, MRR = H_M / M.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from ggl.core.safe_load import safe_load
from ggl.gan.quality import classifier_from_state

SPACES = ("pixel", "feature")
GALLERIES = ("all", "class")
# the identity metric the report plots as "reid": feature space, same-class gallery
HEADLINE = "reid_top1_feature_class"


def reid_keys() -> list:
    return [f"reid_{kind}_{space}_{gallery}" for kind in ("top1", "rr") for space in SPACES for gallery in GALLERIES]


def chance(kind: str, gallery_size: float) -> float:
    """Expected top-1 (``top1``) or reciprocal rank (``rr``) of a random image among ``gallery_size``."""
    m = int(round(gallery_size))
    if m < 1:
        return float("nan")
    if kind == "top1":
        return 1.0 / m
    return float(np.sum(1.0 / np.arange(1, m + 1)) / m)


def ranks(query: Tensor, gallery: Tensor, target: Tensor, member: Optional[Tensor] = None,
          metric: str = "euclidean") -> Tuple[Tensor, Tensor]:
    """(rank, top1) of ``gallery[target[i]]`` for each query i, float64.

    ``query`` (N, D), ``gallery`` (M, D); ``member`` (N, M) bool restricts each query's gallery (the
    target must be a member). ``metric``: ``euclidean`` or ``cosine``. Ties count half (expected rank
    under random tie-breaking); top-1 = 1/(1 + ties) when nothing is strictly closer."""
    q, g = query.double().flatten(1), gallery.double().flatten(1)
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        d = 1.0 - q @ g.T
    else:
        d = torch.cdist(q, g)
    rows = torch.arange(len(q))
    own = d[rows, target.long()][:, None]
    if member is None:
        member = torch.ones_like(d, dtype=torch.bool)
    if not bool(member[rows, target.long()].all()):
        raise ValueError("every victim must be in its own gallery")
    closer = ((d < own) & member).sum(1).double()
    ties = ((d == own) & member).sum(1).double() - 1.0  # the victim itself is not a tie
    rank = 1.0 + closer + ties / 2.0
    top1 = torch.where(closer == 0, 1.0 / (1.0 + ties), torch.zeros_like(rank))
    return rank, top1


def load_feature_classifier(prior_path: Path) -> Tuple[Optional[nn.Module], Optional[str], Optional[str]]:
    """(classifier, public_indices_hash it was trained on, reason if unavailable) for the classifier
    shipped beside a GAN prior (``<stem>_classifier.pt``, hash from ``<stem>.json``)."""
    prior_path = Path(prior_path)
    path = prior_path.with_name(f"{prior_path.stem}_classifier.pt")
    record = prior_path.with_name(f"{prior_path.stem}.json")
    if not path.is_file():
        return None, None, f"no domain classifier beside the prior ({path})"
    try:
        public_hash = json.loads(record.read_text())["data"]["public_indices_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, f"{record} does not say which public split the classifier was trained on"

    try:
        blob = safe_load(path, "domain classifier")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        return classifier_from_state(blob), str(public_hash), None
    except Exception as exc:
        return None, None, f"domain classifier '{path}' could not be loaded ({str(exc).splitlines()[0][:100]})"


class Gallery:
    """The private images a reconstruction is re-identified among, with their pixel and feature
    representations computed once."""

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor, classifier: Optional[nn.Module] = None,
                 feature_reason: Optional[str] = None):
        self.images = images.float()
        self.labels = labels.long()
        self.indices = indices.long()
        self.position = {int(i): k for k, i in enumerate(self.indices.tolist())}
        self.classifier = classifier
        self.feature_reason = None if classifier is not None else (feature_reason or "no feature classifier")
        self.features = self._features(self.images) if classifier is not None else None

    @torch.no_grad()
    def _features(self, x: Tensor, batch: int = 500) -> Tensor:
        return torch.cat([self.classifier.features(x[i:i + batch].float()) for i in range(0, len(x), batch)])

    def score(self, recon: Tensor, victims: Tensor) -> list:
        """Per-image dicts of the ``reid_keys()`` and the gallery sizes, for reconstructions (N, C, H, W)
        of the victims with dataset indices ``victims`` (N,)."""
        missing = [int(v) for v in victims.tolist() if int(v) not in self.position]
        if missing:
            raise ValueError(f"victims {missing} are not in the private gallery")
        target = torch.tensor([self.position[int(v)] for v in victims.tolist()])
        same = self.labels[None, :] == self.labels[target][:, None]
        spaces: Dict[str, Optional[Tuple[Tensor, Tensor, str]]] = {
            "pixel": (recon.float().clamp(0, 1).flatten(1), self.images.flatten(1), "euclidean"),
            "feature": None if self.features is None else (self._features(recon.float().clamp(0, 1)),
                                                           self.features, "cosine")}
        out = [{"reid_gallery_all": float(len(self.indices)), "reid_gallery_class": float(same[i].sum())}
               for i in range(len(target))]
        for space, parts in spaces.items():
            for gallery, member in (("all", None), ("class", same)):
                if parts is None:
                    rank = top1 = [None] * len(target)
                else:
                    r, t = ranks(parts[0], parts[1], target, member, parts[2])
                    rank, top1 = (1.0 / r).tolist(), t.tolist()
                for i in range(len(target)):
                    out[i][f"reid_top1_{space}_{gallery}"] = top1[i]
                    out[i][f"reid_rr_{space}_{gallery}"] = rank[i]
        return out
