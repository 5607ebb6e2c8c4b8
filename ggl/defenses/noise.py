"""Gaussian noise on a client update (a list of tensors): with clipping before it, DP-FedAvg.

Pure functions, shared by the federation's callback and by the adaptive attacker. The privacy
budget of a run is computed in ``ggl.defenses.accounting``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor


def add_gaussian_noise(tensors: Sequence[Tensor], std: float,
                       generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """Add i.i.d. N(0, std**2) to every coordinate; the draws come from ``generator`` tensor by tensor."""
    out = []
    for t in tensors:
        noise = torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        out.append(t + std * noise)
    return out
