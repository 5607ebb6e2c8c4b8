"""QSGD (Alistarh et al., NeurIPS 2017): norm-scaled stochastic quantization (``{name: qsgd}``).

The update (all layers, flattened) is cut into buckets of ``bucket_size`` coordinates. Within a bucket
v with ``s = levels``, each coordinate is sent as ``||v||_2 * sign(v_i) * l_i / s`` where the level
``l_i`` is ``floor(s |v_i| / ||v||)`` or one more, rounding up with probability equal to the
fractional part: E[Q(v)] = v (unbiased), and (the paper's Lemma 3.1)
E ||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2 for a bucket of n coordinates.

Bits, stated as sent with a plain fixed-length code (no Elias coding): per bucket one float32 norm;
per coordinate one sign bit and ceil(log2(s + 1)) bits for the level 0..s.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.core.checks import count
from ggl.core.seeding import STREAM_DEFENSE, generator
from ggl.defenses.base import Defense, FLOAT_BITS, expectation, flat_cat, register, split_like

# draws from (seed, round, client, STREAM_DEFENSE, QSGD_SUBSTREAM): apart from noise and stochastic rounding
QSGD_SUBSTREAM = 2


def qsgd_bits(numel: int, levels: int, bucket_size: int) -> int:
    buckets = -(-numel // bucket_size)
    return FLOAT_BITS * buckets + numel * (1 + math.ceil(math.log2(levels + 1)))


def qsgd_quantize(tensors: Sequence[Tensor], levels: int, bucket_size: int,
                  generator: Optional[torch.Generator] = None) -> Tuple[List[Tensor], int]:
    """QSGD with ``levels`` (s) levels per bucket of ``bucket_size``; returns (tensors, payload bits)."""
    tensors = list(tensors)
    flat = flat_cat(tensors)
    n = flat.numel()
    pad = (-n) % bucket_size
    v = torch.cat([flat, flat.new_zeros(pad)]).view(-1, bucket_size)  # zero padding changes no norm
    norm = v.norm(dim=1, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    r = v.abs() / safe * levels                      # in [0, s]
    lower = torch.floor(r)
    u = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype)
    level = lower + (u < r - lower).to(v.dtype)      # P(one up) = fractional part: unbiased
    q = norm * torch.sign(v) * level / levels
    return split_like(q.reshape(-1)[:n], tensors), qsgd_bits(n, levels, bucket_size)


@register
class QSGD(Defense):
    """``levels``: s, the quantization levels per bucket (>= 1); ``bucket_size``: coordinates per norm.
    Unbiased, so the adaptive attacker applies its expectation: the update itself."""
    name: str = "qsgd"
    levels: int = 4
    bucket_size: int = 512

    def check(self, key: str) -> None:
        count(self.levels, f"{key}.levels", "defenses.qsgd.levels")
        count(self.bucket_size, f"{key}.bucket_size", "defenses.qsgd.bucket_size")

    @property
    def label(self) -> str:
        return f"qsgd{self.levels}-b{self.bucket_size}"

    def transform(self, tensors, update):
        device = tensors[0].device if tensors else "cpu"
        gen = generator(update.seed, update.round, update.client_id, STREAM_DEFENSE, QSGD_SUBSTREAM, device=device)
        return qsgd_quantize(tensors, self.levels, self.bucket_size, gen)

    def attack_model(self):
        return expectation()


def payload_norms(tensors: Sequence[Tensor], levels: int, bucket_size: int) -> Tuple[Tensor, Tensor]:
    """(norms, known) per bucket, read off the sent values ``||v|| * sign(v_i) * l_i / s`` (float64): the
    unit ``||v|| / s`` is the largest value of which every sent magnitude is an integer multiple <= s (the
    smallest nonzero magnitude over j, for the smallest j that fits). Exact up to rounding when the
    bucket's levels have no common divisor > 1 (any level 1 does); a bucket that sent only zeros has no
    norm to read (``known`` False, norm 0)."""
    flat = flat_cat(tensors).double()
    n = flat.numel()
    pad = (-n) % bucket_size
    mag = torch.cat([flat, flat.new_zeros(pad)]).view(-1, bucket_size).abs()
    known = (mag > 0).any(1)
    smallest = torch.where(mag > 0, mag, torch.full_like(mag, float("inf"))).amin(1)
    smallest = torch.where(known, smallest, torch.ones_like(smallest))
    unit = torch.zeros_like(smallest)
    for j in range(levels, 0, -1):  # the smallest j that fits wins: overwrite from the largest down
        ratio = mag / (smallest / j).unsqueeze(1)
        fits = ((ratio - ratio.round()).abs() < 1e-3).all(1) & (ratio.round() <= levels).all(1)
        unit = torch.where(fits, smallest / j, unit)
    known = known & (unit > 0)
    return torch.where(known, unit * levels, torch.zeros_like(unit)), known
