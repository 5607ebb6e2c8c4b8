"""Top-k sparsification of a client update (a list of tensors).

Pure functions, shared by the federation's callback and by the adaptive attacker. Error feedback
(the residual a client keeps and adds to its next update) is state, so it lives in the callback
(``ggl.fl.callbacks.TopKSparsify``).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.quantize import FLOAT_BITS


def topk_count(numel: int, fraction: float) -> int:
    """k = ceil(fraction * numel), at least 1 and at most numel."""
    return min(numel, max(1, math.ceil(fraction * numel)))


def index_bits(numel: int) -> int:
    """Bits of one coordinate index into an update of ``numel`` coordinates: ceil(log2(numel))."""
    return (int(numel) - 1).bit_length()


def topk_payload_bits(numel: int, k: int) -> int:
    """k float32 values plus k indices of ceil(log2(numel)) bits each."""
    return k * (FLOAT_BITS + index_bits(numel))


def topk_sparsify(tensors: Sequence[Tensor], fraction: float) -> Tuple[List[Tensor], int]:
    """Keep the k = ceil(fraction * numel) largest-magnitude coordinates over the whole update; zero the rest.

    Exactly k coordinates are kept (ties broken by ``torch.topk``). Returns (sparse tensors,
    payload bits = k * (32 + ceil(log2(numel)))).
    """
    tensors = list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    k = topk_count(flat.numel(), fraction)
    idx = flat.abs().topk(k, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter(0, idx, True)
    kept = torch.where(mask, flat, torch.zeros_like(flat))
    out = [chunk.view_as(t) for chunk, t in zip(torch.split(kept, [t.numel() for t in tensors]), tensors)]
    return out, topk_payload_bits(flat.numel(), k)
