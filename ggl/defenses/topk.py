"""Global top-k sparsification (``{name: topk, fraction, error_feedback}``).

Error feedback (the residual a client keeps and adds to its next update) is per-client state: the
defense computes it (``apply``), the generic callback keeps it per client, checkpoints it and shares
it across processes (``ggl.fl.callbacks.DefenseCallback``).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.base import FLOAT_BITS, Defense, flat_cat, observed_mask, register, split_like
from ggl.core.errors import ConfigError


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
    flat = flat_cat(tensors)
    k = topk_count(flat.numel(), fraction)
    idx = flat.abs().topk(k, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter(0, idx, True)
    kept = torch.where(mask, flat, torch.zeros_like(flat))
    return split_like(kept, tensors), topk_payload_bits(flat.numel(), k)


@register
class TopK(Defense):
    """Keep the ``fraction`` largest-magnitude coordinates of the whole update; bits = k float32 values +
    k indices. ``error_feedback``: each client adds what it has not sent so far to its next update. The
    adaptive attacker uses the observed mask (the coordinates the client sent)."""
    name: str = "topk"
    family = "top-k"
    label_pattern = "top"      # top0.01, top0.1-ef
    fraction: float = 0.1
    error_feedback: bool = False

    def check(self, key: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"config key '{key}.fraction' = {self.fraction} must be in (0, 1]")

    @property
    def label(self) -> str:
        return f"top{self.fraction:g}" + ("-ef" if self.error_feedback else "")

    @property
    def norm_preserving(self) -> bool:  # the residual added back can make an update longer
        return not self.error_feedback

    @property
    def keeps_client_state(self) -> bool:
        return self.error_feedback

    def transform(self, tensors, update):
        return topk_sparsify(tensors, self.fraction)

    def apply(self, tensors, update, state):
        tensors = list(tensors)
        if self.error_feedback and state is not None:
            tensors = split_like(flat_cat(tensors) + state.to(tensors[0].device), tensors)
        sent, bits = topk_sparsify(tensors, self.fraction)
        residual = flat_cat([t - s for t, s in zip(tensors, sent)]).detach() if self.error_feedback else None
        return sent, bits, residual

    def attack_model(self):
        return observed_mask()
