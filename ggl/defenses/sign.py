"""Sign compression (``{name: sign}``): 1 bit per coordinate, one float32 scale (mean |x|) per tensor."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.base import FLOAT_BITS, Defense, reapply, register


def sign_payload_bits(numels: Sequence[int]) -> int:
    """One bit per coordinate plus one float32 scale per tensor."""
    return int(sum(numels)) + FLOAT_BITS * len(numels)


def sign_update(tensors: Sequence[Tensor]) -> Tuple[List[Tensor], int]:
    """Replace each tensor by ``mean(|x|) * s`` with ``s = +1`` where ``x >= 0`` and ``-1`` elsewhere.

    The scale keeps each tensor's L1 norm (so the update keeps its magnitude). One bit cannot carry
    a zero: exact zeros are sent as ``+scale`` (an all-zero tensor stays all zero, its scale being 0).
    Returns (tensors, payload bits = numel + 32 * number of tensors).
    """
    tensors = list(tensors)
    out = []
    for t in tensors:
        scale = t.abs().mean()
        out.append(torch.where(t >= 0, scale, -scale))
    return out, sign_payload_bits([t.numel() for t in tensors])


@register
class Sign(Defense):
    """The adaptive attacker re-applies it, with a straight-through gradient."""
    name: str = "sign"

    norm_preserving = True  # mean(|x|) * sign has L2 norm ||x||_1 / sqrt(n) <= ||x||_2

    def transform(self, tensors, update):
        return sign_update(tensors)

    def attack_model(self):
        return reapply(lambda ts: sign_update(ts)[0], straight_through=True)


def payload_scales(tensors: Sequence[Tensor]) -> List[Tensor]:
    """Each tensor's scale ``mean(|x|)`` as the payload carries it (float32), read off the sent values
    ``+-scale``. ValueError when a tensor is not of that form (not this defence's output)."""
    scales = []
    for t in tensors:
        scale = t.abs().amax() if t.numel() else t.new_zeros(())
        if not bool((t.abs() == scale).all()):
            raise ValueError("the values are not a sign payload: a tensor holds more than +-one scale")
        scales.append(scale)
    return scales
