"""Sign compression of a client update (a list of tensors): 1 bit per coordinate, one scale per tensor.

Pure functions, shared by the federation's callback and by the adaptive attacker.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.quantize import FLOAT_BITS


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
