"""Per-layer magnitude pruning (``{name: prune, percent: 90}``): GGL's and DLG's "gradient compression".

Every tensor of the update (one per layer parameter) loses its ``percent``% smallest-magnitude entries,
floor(percent / 100 * numel) of them, so each layer keeps the same share. Today's ``topk`` is
different: one global top-k over the whole update, where large-gradient layers take most of the budget.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.base import FLOAT_BITS, Defense, check_percent, observed_mask, register, share_count
from ggl.defenses.topk import index_bits


def prune_layers(tensors: Sequence[Tensor], percent: float) -> Tuple[List[Tensor], int]:
    """Zero the floor(percent/100 * numel) smallest-magnitude entries of every tensor (ties: ``torch.topk``).

    Bits per tensor: the cheaper of dense float32 and sparse (kept values as float32 + an index of
    ceil(log2(numel)) bits each).
    """
    out, bits = [], 0
    for t in tensors:
        n = t.numel()
        keep = n - share_count(percent, n)
        if keep == n:
            out.append(t.clone())
        else:
            flat = t.reshape(-1)
            idx = flat.abs().topk(keep, sorted=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter(0, idx, True)
            out.append(torch.where(mask, flat, torch.zeros_like(flat)).view_as(t))
        bits += min(FLOAT_BITS * n, keep * (FLOAT_BITS + index_bits(n)))
    return out, bits


@register
class Prune(Defense):
    """The adaptive attacker uses the observed mask (the entries the client sent)."""
    name: str = "prune"
    percent: float = 90.0

    norm_preserving = True

    def check(self, key: str) -> None:
        check_percent(key, self.percent)

    @property
    def label(self) -> str:
        return f"prune{self.percent:g}"

    def transform(self, tensors, update):
        return prune_layers(tensors, self.percent)

    def attack_model(self):
        return observed_mask()
