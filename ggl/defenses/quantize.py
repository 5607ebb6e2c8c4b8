"""Uniform quantization of a client update (a list of tensors): the defence under audit.

Pure functions, shared by the federation's callback and by the adaptive attacker, so both apply the
very same transform.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

FLOAT_BITS = 32
# what a quantized payload carries besides its codes: the range minimum and the step, as float32
SCALE_BITS_PER_RANGE = 2 * FLOAT_BITS


def _quantize_flat(x: Tensor, bits: int, stochastic: bool, generator: Optional[torch.Generator]) -> Tensor:
    lo, hi = x.min(), x.max()
    levels = 2 ** bits - 1
    # The originally proposed defence uses step (max-min)/2**bits, which yields 2**bits + 1 levels
    # (codes 0..2**bits): one more than `bits` bits can carry. (max-min)/(2**bits - 1) gives exactly
    # 2**bits levels, codes 0..2**bits-1, with both ends of the range representable.
    step = (hi - lo) / levels
    safe_step = torch.where(step > 0, step, torch.ones_like(step))
    scaled = (x - lo) / safe_step
    if stochastic:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        codes = torch.floor(scaled + noise)  # P(round up) = fractional part: unbiased
    else:
        codes = torch.round(scaled)
    codes = codes.clamp(0, levels)  # out-of-place: vmap (adaptive attacker) has no rule for clamp_
    return torch.where(step > 0, codes * step + lo, x)


def quantize_update(tensors: Sequence[Tensor], bits: int, rounding: str = "nearest",
                    range_mode: str = "global",
                    generator: Optional[torch.Generator] = None) -> Tuple[List[Tensor], int]:
    """Quantize ``tensors`` to ``bits`` bits per coordinate; returns (dequantized tensors, payload bits).

    ``range_mode='global'``: one min/max over all tensors (the originally proposed defence);
    ``'per_tensor'``: a min/max per tensor. ``rounding='nearest'`` rounds to the closest level
    (deterministic, error <= step/2); ``'stochastic'`` rounds up with probability equal to the
    fractional position between levels, so E[q(x)] = x (QSGD-style, unbiased).
    Levels: ``step = (max - min) / (2**bits - 1)``; see ``_quantize_flat`` for why not ``/ 2**bits``.
    ``bits=32`` means off: the tensors are returned as they are.

    Payload = ``bits`` per coordinate + a float32 minimum and step per range.
    """
    tensors = list(tensors)
    numel = sum(t.numel() for t in tensors)
    if bits >= FLOAT_BITS:
        return [t.clone() for t in tensors], FLOAT_BITS * numel
    stochastic = rounding == "stochastic"
    if range_mode == "global":
        flat = torch.cat([t.reshape(-1) for t in tensors])
        q = _quantize_flat(flat, bits, stochastic, generator)
        out = [chunk.view_as(t) for chunk, t in zip(torch.split(q, [t.numel() for t in tensors]), tensors)]
        n_ranges = 1
    elif range_mode == "per_tensor":
        out = [_quantize_flat(t.reshape(-1), bits, stochastic, generator).view_as(t) for t in tensors]
        n_ranges = len(tensors)
    else:
        raise ValueError(f"range_mode must be 'global' or 'per_tensor', not {range_mode!r}")
    return out, bits * numel + SCALE_BITS_PER_RANGE * n_ranges
