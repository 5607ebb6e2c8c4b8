"""Uniform quantization on a min/max grid: the defence under audit (``{name: quantize}``).

``quantize_update`` is a pure function, shared by the federation (``Quantize.transform``) and by the
adaptive attacker (``Quantize.attack_model``), so both apply the very same transform.

Two grids:

* ``grid: project`` (default): step ``(max - min) / (2**bits - 1)``, exactly ``2**bits`` levels
  (codes ``0..2**bits-1``), both ends of the range representable: ``bits`` bits per coordinate.
* ``grid: seed``: the originally proposed step ``(max - min) / 2**bits``, which yields ``2**bits + 1``
  levels (codes ``0..2**bits``): one more than ``bits`` bits can carry, so it costs
  ``ceil(log2(2**bits + 1)) = bits + 1`` bits per coordinate. For reproducing that scheme.

``rounding: stochastic`` is stochastic rounding on that min/max grid (round up with probability equal
to the fractional position: unbiased). It is *not* QSGD (norm-scaled levels; see ``qsgd.py``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.defenses.base import FLOAT_BITS, Defense, expectation, reapply, register
from ggl.errors import ConfigError

# what a quantized payload carries besides its codes: the range minimum and the step, as float32
SCALE_BITS_PER_RANGE = 2 * FLOAT_BITS
GRIDS = ("project", "seed")


def grid_intervals(bits: int, grid: str = "project") -> int:
    """Steps between the range's minimum and maximum: 2**bits - 1 (project) or 2**bits (seed)."""
    return 2 ** bits - 1 if grid == "project" else 2 ** bits


def code_bits(bits: int, grid: str = "project") -> int:
    """Bits one code takes: ceil(log2(number of levels))."""
    return math.ceil(math.log2(grid_intervals(bits, grid) + 1))


def _quantize_flat(x: Tensor, intervals: int, stochastic: bool, generator: Optional[torch.Generator]) -> Tensor:
    lo, hi = x.amin(), x.amax()  # amin/amax: min()/max() also track indices, ~4x slower under vmap
    step = (hi - lo) / intervals
    safe_step = torch.where(step > 0, step, torch.ones_like(step))
    scaled = (x - lo) / safe_step
    # the clamp: floor(scaled + noise) reaches intervals + 1 at the maximum, and so can rounding when the
    # range is a few subnormals wide (the step then rounds far from (hi - lo) / intervals)
    if stochastic:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        codes = torch.floor(scaled + noise).clamp(0, intervals)  # P(round up) = fractional part: unbiased
    elif torch.is_grad_enabled():
        codes = torch.round(scaled).clamp(0, intervals)
    else:  # the same values in place: the attacker quantizes ~1 M coordinates per population
        codes = scaled.round_().clamp(0, intervals)  # clamp out of place: vmap has no batching rule for clamp_
        return torch.where(step > 0, codes.mul_(step).add_(lo), x)
    return torch.where(step > 0, codes * step + lo, x)


def quantize_update(tensors: Sequence[Tensor], bits: int, rounding: str = "nearest",
                    range_mode: str = "global", generator: Optional[torch.Generator] = None,
                    grid: str = "project") -> Tuple[List[Tensor], int]:
    """Quantize ``tensors`` to ``bits`` bits per coordinate; returns (dequantized tensors, payload bits).

    ``range_mode='global'``: one min/max over all tensors (the originally proposed defence);
    ``'per_tensor'``: a min/max per tensor. ``rounding='nearest'`` rounds to the closest level
    (deterministic, error <= step/2); ``'stochastic'`` rounds up with probability equal to the
    fractional position between levels, so E[q(x)] = x (stochastic rounding on a min/max grid).
    ``grid``: see the module docstring. ``bits=32`` means off: the tensors are returned as they are.

    Payload = ``code_bits(bits, grid)`` per coordinate + a float32 minimum and step per range.
    """
    tensors = list(tensors)
    numel = sum(t.numel() for t in tensors)
    if bits >= FLOAT_BITS:
        return [t.clone() for t in tensors], FLOAT_BITS * numel
    stochastic = rounding == "stochastic"
    intervals = grid_intervals(bits, grid)
    if range_mode == "global":
        flat = torch.cat([t.reshape(-1) for t in tensors])
        q = _quantize_flat(flat, intervals, stochastic, generator)
        out = [chunk.view_as(t) for chunk, t in zip(torch.split(q, [t.numel() for t in tensors]), tensors)]
        n_ranges = 1
    elif range_mode == "per_tensor":
        out = [_quantize_flat(t.reshape(-1), intervals, stochastic, generator).view_as(t) for t in tensors]
        n_ranges = len(tensors)
    else:
        raise ValueError(f"range_mode must be 'global' or 'per_tensor', not {range_mode!r}")
    return out, code_bits(bits, grid) * numel + SCALE_BITS_PER_RANGE * n_ranges


@register
class Quantize(Defense):
    """``{name: quantize, bits: 4, rounding: nearest, range: global, grid: project}``."""
    name: str = "quantize"
    bits: int = 4
    rounding: str = "nearest"
    range: str = "global"
    grid: str = "project"

    def check(self, key: str) -> None:
        if not (1 <= self.bits <= 16 or self.bits == 32):
            raise ConfigError(f"config key '{key}.bits' = {self.bits} must be in 1..16, or 32 for off")
        if self.rounding not in ("nearest", "stochastic"):
            raise ConfigError(f"config key '{key}.rounding' = {self.rounding!r} is not one of nearest, stochastic")
        if self.range not in ("global", "per_tensor"):
            raise ConfigError(f"config key '{key}.range' = {self.range!r} is not one of global, per_tensor")
        if self.grid not in GRIDS:
            raise ConfigError(f"config key '{key}.grid' = {self.grid!r} is not one of {', '.join(GRIDS)}")

    @property
    def label(self) -> str:
        if self.bits == 32:
            return "fp32"
        suffix = "" if (self.rounding, self.range) == ("nearest", "global") else f"-{self.rounding}-{self.range}"
        return f"q{self.bits}{suffix}" + ("-seedgrid" if self.grid == "seed" else "")

    def transform(self, tensors, update):
        if self.bits >= FLOAT_BITS:
            return list(tensors), None
        from ggl.seeding import STREAM_DEFENSE

        gen = update.rng(STREAM_DEFENSE) if self.rounding == "stochastic" else None
        return quantize_update(tensors, self.bits, self.rounding, self.range, generator=gen, grid=self.grid)

    def attack_model(self):
        if self.bits >= FLOAT_BITS or self.rounding == "stochastic":
            return expectation()  # E[q(u)] = u: stochastic rounding is unbiased inside the range
        return reapply(lambda ts: quantize_update(ts, self.bits, "nearest", self.range, grid=self.grid)[0],
                       straight_through=True)
