"""Uniform quantization on a min/max grid: the defence under audit (``{name: quantize}``).

``quantize_update`` is a pure function, shared by the federation (``Quantize.transform``) and by the
adaptive attacker (``Quantize.attack_model``), so both apply the very same transform.

* ``grid: project`` (default): step ``(max - min) / (2**bits - 1)``, exactly ``2**bits`` levels, both
  ends of the range representable: ``bits`` bits per coordinate.
* ``grid: seed``: the originally proposed step ``(max - min) / 2**bits``, ``2**bits + 1`` levels: one
  more than ``bits`` bits can carry, so counted as ``bits + 1`` bits per coordinate.
* ``rounding: stochastic``: stochastic rounding on that grid (round up with probability equal to the
  fractional position: unbiased). It is *not* QSGD (norm-scaled levels; see ``qsgd.py``).
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.core.errors import ConfigError
from ggl.core.checks import count
from ggl.core.seeding import STREAM_DEFENSE
from ggl.defenses.base import Defense, FLOAT_BITS, expectation, reapply, register

# what a quantized payload carries besides its codes: the range minimum and the step, as float32
SCALE_BITS_PER_RANGE = 2 * FLOAT_BITS
GRIDS = ("project", "seed")
RANGES = ("global", "per_tensor")  # one min/max over the whole update, or one per tensor


def _check_range(range_mode: str) -> None:
    if range_mode not in RANGES:
        raise ValueError(f"range_mode must be 'global' or 'per_tensor', not {range_mode!r}")


def grid_intervals(bits: int, grid: str = "project") -> int:
    """Steps between the range's minimum and maximum: 2**bits - 1 (project) or 2**bits (seed)."""
    return 2 ** bits - 1 if grid == "project" else 2 ** bits


def code_bits(bits: int, grid: str = "project") -> int:
    """Bits one code takes: ceil(log2(number of levels))."""
    return math.ceil(math.log2(grid_intervals(bits, grid) + 1))


def quantize_rows(x: Tensor, intervals: int, noise: Optional[Tensor] = None, may_be_vmapped: bool = True) -> Tensor:
    """Each row of ``x`` (..., N) on its own min/max grid of ``intervals`` steps: nearest rounding, or
    ``floor(scaled + noise)`` with ``noise`` ~ U[0, 1) broadcastable to ``x`` (stochastic rounding). A row
    of one value (step 0), or with a NaN, comes back as it is. ``may_be_vmapped=False`` (the caller
    holds real tensors) allows an in-place clamp and a data-dependent shortcut; the values are the same."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)  # not aminmax(dim=): slower (benchmarks/README.md); not min(): indices
    return _Grid(lo, hi, intervals, real=not may_be_vmapped).apply(x, noise)


class _Grid:
    """Min/max grids of ``intervals`` steps, one per range: ``lo`` and ``hi`` hold one entry per range and
    broadcast over a tensor's trailing dims. ``real``: the caller holds real tensors (never vmapped), which
    allows an in-place clamp and data-dependent shortcuts, checked once per grid; the values are the same."""

    def __init__(self, lo: Tensor, hi: Tensor, intervals: int, real: bool = False):
        self.lo, self.hi, self.intervals, self.real = lo, hi, intervals, real
        self.step = (hi - lo) / intervals
        self.ok = self.step > 0  # a range of one value (step 0), or with a NaN, leaves its coordinates as they are
        self.safe_step = torch.where(self.ok, self.step, torch.ones_like(self.step))

    @functools.cached_property
    def overshoots(self) -> bool:
        """Whether some range's maximum rounds past the top code (a range a few subnormals wide). x - lo >= 0
        and the code is monotone in x, so only such a range needs the clamp."""
        return bool((torch.sub(self.hi, self.lo).div_(self.safe_step).round_() > self.intervals).any())

    @functools.cached_property
    def all_ok(self) -> bool:
        return bool(self.ok.all())

    def apply(self, x: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """``x`` on the grid: nearest rounding, or ``floor(scaled + noise)`` (stochastic rounding)."""
        trailing = (1,) * (x.dim() - self.lo.dim())  # lo (P,) against x (P, ...): one range per candidate
        lo, step, ok, safe_step = (v.view(v.shape + trailing) for v in (self.lo, self.step, self.ok, self.safe_step))
        # the clamp: floor(scaled + noise) reaches intervals + 1 at the maximum, and so can rounding when the
        # range is a few subnormals wide (the step then rounds far from (hi - lo) / intervals)
        if noise is None and not torch.is_grad_enabled():
            # the same values in place: the attacker quantizes ~1 M coordinates per population
            codes = torch.sub(x, lo).div_(safe_step).round_()
            if not self.real:  # vmap has no batching rule for clamp_, nor for a data-dependent branch
                codes = codes.clamp(0, self.intervals)
            elif self.overshoots:
                codes.clamp_(0, self.intervals)
            q = codes.mul_(step).add_(lo)
            if self.real and self.all_ok:
                return q
        else:
            scaled = (x - lo) / safe_step
            codes = torch.round(scaled) if noise is None else torch.floor(scaled + noise)  # floor: P(up) = fraction
            q = codes.clamp(0, self.intervals) * step + lo
        return torch.where(ok, q, x)


def _quantize(tensors: Sequence[Tensor], bits: int, rounding: str, range_mode: str,
              generator: Optional[torch.Generator], grid: str) -> List[Tensor]:
    """quantize_update's values (of one update; vmap may batch it)."""
    _check_range(range_mode)
    intervals = grid_intervals(bits, grid)

    def rows(x: Tensor) -> Tensor:
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                 if rounding == "stochastic" else None)
        return quantize_rows(x, intervals, noise)
    if range_mode == "global":
        sizes = [t.numel() for t in tensors]
        q = rows(torch.cat([t.reshape(-1) for t in tensors]))
        return [chunk.view_as(t) for chunk, t in zip(torch.split(q, sizes), tensors)]
    return [rows(t.reshape(-1)).view_as(t) for t in tensors]  # per_tensor


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
    out = _quantize(tensors, bits, rounding, range_mode, generator, grid)
    n_ranges = 1 if range_mode == "global" else len(tensors)
    return out, code_bits(bits, grid) * numel + SCALE_BITS_PER_RANGE * n_ranges


def quantize_candidates(tensors: Sequence[Tensor], bits: int, range_mode: str = "global",
                        grid: str = "project") -> List[Tensor]:
    """Nearest-rounding ``quantize_update`` of P updates at once (each tensor (P, *shape), each update its
    own ranges): the values of ``vmap`` of it, without vmap's cost per op (the adaptive attacker's search).

    Each tensor is quantized where it lies, in its own memory layout: a global range is the minimum and
    maximum of the tensors' own (exact in any order), so the update is never concatenated (a copy of it:
    a quarter of this function's time on LeNet)."""
    if bits >= FLOAT_BITS:
        return [t.clone() for t in tensors]
    _check_range(range_mode)
    rows = [t.unsqueeze(1) if t.dim() == 1 else t for t in tensors]  # a scalar parameter: one coordinate each
    lo = [r.amin(tuple(range(1, r.dim()))) for r in rows]  # (P,) each
    hi = [r.amax(tuple(range(1, r.dim()))) for r in rows]
    intervals = grid_intervals(bits, grid)
    if range_mode == "global":
        grids = [_Grid(torch.stack(lo).amin(0), torch.stack(hi).amax(0), intervals, real=True)] * len(rows)
    else:
        grids = [_Grid(low, high, intervals, real=True) for low, high in zip(lo, hi)]
    return [g.apply(r).view_as(t) for g, r, t in zip(grids, rows, tensors)]


@register
class Quantize(Defense):
    """``{name: quantize, bits: 4, rounding: nearest, range: global, grid: project}``."""
    name: str = "quantize"
    label_pattern = r"q\d"      # q4, q2-stochastic-global (bits=32 is "fp32": no defence)
    bits: int = 4
    rounding: str = "nearest"
    range: str = "global"
    grid: str = "project"

    def check(self, key: str) -> None:
        count(self.bits, f"{key}.bits", "defenses.quantize.bits", lo=None)
        if not (1 <= self.bits <= 16 or self.bits == 32):
            raise ConfigError(f"config key '{key}.bits' = {self.bits} must be in 1..16, or 32 for off")
        if self.rounding not in ("nearest", "stochastic"):
            raise ConfigError(f"config key '{key}.rounding' = {self.rounding!r} is not one of nearest, stochastic")
        if self.range not in RANGES:
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

        gen = update.rng(STREAM_DEFENSE) if self.rounding == "stochastic" else None
        return quantize_update(tensors, self.bits, self.rounding, self.range, generator=gen, grid=self.grid)

    def attack_model(self):
        if self.bits >= FLOAT_BITS or self.rounding == "stochastic":
            return expectation()  # E[q(u)] = u: stochastic rounding is unbiased inside the range
        return reapply(lambda ts: quantize_update(ts, self.bits, "nearest", self.range, grid=self.grid)[0],
                       straight_through=True,
                       batched_fn=lambda ts: quantize_candidates(ts, self.bits, self.range, self.grid))


# ---------------------------------------------------------------------------------------- the public grid
def quantize_on_grid(x: Tensor, lo: Tensor, step: Tensor, intervals: int) -> Tensor:
    """``x`` on a *given* grid (``lo``, ``step``, broadcastable to ``x``): nearest rounding with the very
    operations of ``_Grid.apply``, so on the client's own (lo, step) it returns the client's values bit for
    bit. ``step`` must be > 0. The attacker's observed-grid model (``ggl.attack.grid``)."""
    codes = torch.round((x - lo) / step).clamp(0, intervals)
    return codes * step + lo


def payload_grid(tensors: Sequence[Tensor], bits: int, range_mode: str = "global",
                 grid: str = "project") -> List[Tuple[Tensor, Tensor]]:
    """(lo, step) of each range of a quantized payload (one range for ``global``, one per tensor), derived
    from its dequantized values ``tensors`` (what an ``Observation`` stores; the payload itself carries
    both as float32, counted in ``SCALE_BITS_PER_RANGE``).

    ``lo`` is the smallest value (code 0 dequantizes to ``lo`` exactly); ``step`` is the float nearest
    ``(max - lo) / intervals`` on which quantizing the values returns them bit for bit (the client's step
    does; a neighbour a few ulps away may too, and is then indistinguishable from it given the payload).
    A range sent unchanged (one value) gets step 0. ValueError when no step within 16 ulps reproduces the
    values: they are not this quantizer's output (e.g. another defence came after it)."""
    _check_range(range_mode)
    intervals = grid_intervals(bits, grid)
    rows = ([torch.cat([t.reshape(-1) for t in tensors])] if range_mode == "global"
            else [t.reshape(-1) for t in tensors])
    out = []
    for r in rows:
        lo, hi = r.min(), r.max()
        estimate = (hi - lo) / intervals
        if not estimate > 0:
            out.append((lo, torch.zeros_like(lo)))
            continue
        up, down, candidates = estimate, estimate, [estimate]
        for _ in range(16):
            up, down = torch.nextafter(up, up + estimate), torch.nextafter(down, torch.zeros_like(down))
            candidates += [up, down]
        step = next((s for s in candidates if s > 0 and torch.equal(quantize_on_grid(r, lo, s, intervals), r)), None)
        if step is None:
            raise ValueError(f"the values are not a {bits}-bit {grid}-grid payload: no step near "
                             f"{float(estimate):.6g} reproduces them")
        out.append((lo, step))
    return out
