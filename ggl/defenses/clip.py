"""L2-norm clipping of a client update (a list of tensors): the sensitivity bound of DP-FedAvg.

Pure functions, shared by the federation's callback and by the adaptive attacker.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

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
