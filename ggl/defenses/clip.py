"""L2-norm clipping of a client update (``{name: clip, max_norm}``): the sensitivity bound of DP-FedAvg."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.base import Defense, reapply, register
from ggl.core.errors import ConfigError

# Opacus' guard against division by zero: the factor max_norm / (norm + EPS) keeps the clipped norm
# strictly below max_norm, never above it through rounding
EPS = 1e-6


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of all coordinates of all tensors together (a 0-dim tensor)."""
    return torch.sqrt(sum(t.pow(2).sum() for t in tensors))


def clip_update(tensors: Sequence[Tensor], max_norm: float) -> Tuple[List[Tensor], Tensor]:
    """Scale the whole update so that its global L2 norm is at most ``max_norm``.

    Returns (clipped tensors, the norm before clipping as a 0-dim tensor). An update already inside
    the ball is returned unchanged (as copies). One factor for all tensors, so the update keeps its
    direction. The payload size does not change: a scaled update is sent in the same format.
    """
    tensors = list(tensors)
    norm = global_norm(tensors)
    factor = (max_norm / (norm + EPS)).clamp(max=1.0)
    return [t * factor for t in tensors], norm


@register
class Clip(Defense):
    """Scale the whole update to global L2 norm <= ``max_norm``. Logs, per round, the mean norm before
    clipping (``clip/norm_mean``) and the share of updates clipped (``clip/clipped``): the two numbers
    to look at when choosing ``max_norm``. The adaptive attacker clips its trial updates the same way."""
    name: str = "clip"
    max_norm: float = 1.0

    norm_preserving = True
    round_stat_keys = ("clip/norm_mean", "clip/clipped")

    def check(self, key: str) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ConfigError(f"config key '{key}.max_norm' = {self.max_norm} must be a positive number")

    @property
    def label(self) -> str:
        return f"clip{self.max_norm:g}"

    @property
    def sensitivity_bound(self) -> float:
        return float(self.max_norm)

    def transform(self, tensors, update):
        return clip_update(tensors, self.max_norm)[0], None

    def round_stats(self, before, after):
        norm = float(global_norm(before))
        return {"clip/norm_mean": norm, "clip/clipped": float(norm > self.max_norm)}

    def attack_model(self):
        return reapply(lambda ts: clip_update(ts, self.max_norm)[0])
