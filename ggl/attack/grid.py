"""The public grid of a quantized payload, as the server that receives it knows it.

A deterministic quantizer's payload carries, besides its codes, the public numbers that decode them:
``quantize`` (nearest) each range's ``lo`` and ``step`` (code ``k``: the cell ``lo + (k +- 1/2) step``),
``sign`` each tensor's scale ``mean(|x|)``, ``qsgd`` each bucket's norm. An ``Observation`` stores the
dequantized values; the grid is read off them exactly (``quantize.payload_grid``, ``sign.payload_scales``,
``qsgd.payload_norms``), so no private number enters. Three uses (``attackers/grid_*.py``): ``quantize``
(a trial quantized on the payload's grid, not on its own min/max), ``cell_loss`` (each trial coordinate's
squared distance, in grid units, to its code's cell) and ``decode`` (the cell that holds 0 decoded as
exactly 0, not as its level ``c0 = lo + k0 step``). The quantizer must end the chain (steps before it are
modelled as ``DefenseModel`` does); ``grid_refusal`` says in one line why an observation has no grid.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.attack.factored import (CellRows, FixedGrid, SignBlocks, blockwise, cell_kernel, outer_cell_distance,
                                 outer_loss, sign_cell_kernel)
from ggl.attack.per_candidate import OuterSum
from ggl.attack.trial import DefenseModel
from ggl.core.errors import UserError
from ggl.defenses import MASK, NONE, parse_chain
from ggl.defenses.qsgd import QSGD, payload_norms
from ggl.defenses.quantize import Quantize, grid_intervals, payload_grid, quantize_on_grid
from ggl.defenses.sign import Sign, payload_scales

FLOAT_BITS = 32


class NoGrid(UserError):
    """The observation carries no public grid this module can use (the message says why, in one line)."""


def defence_steps(specs: Sequence) -> list:
    """An observation's defence specs as ``Defense`` objects, the no-op steps (fp32, identity) left out."""
    return [d for d in parse_chain(specs, "observation.defenses") if d.label not in ("fp32", "identity")]


def _check_prefix(prefix: list) -> None:
    for d in prefix:
        kind = d.attack_model().kind
        if kind in (MASK, NONE):
            raise NoGrid(f"defence '{d.label}' before the quantizer is not modelled on the quantized payload "
                         f"(its mask is not observable after quantization)")


class Grid:
    """A payload's public grid; subclasses per quantizer. ``sizes``: the update's tensor shapes."""
    kind = ""
    decodes = False      # whether ``decode`` changes anything (a cell that holds 0 decoded off 0)
    quantizes = False    # whether ``quantize`` is a deterministic model (not an expectation)

    def __init__(self, label: str, observed: Sequence[Tensor], prefix: Optional[list] = None):
        self.label = label
        self.observed = [t.detach() for t in observed]
        self.prefix = prefix or []
        self._prefix_model = None
        if self.prefix:
            model = DefenseModel(self.prefix)
            self._prefix_model = model if model.active else None

    # ------------------------------------------------------------------ pieces every quantizer defines
    def quantize(self, trial: Sequence[Tensor]) -> List[Tensor]:
        """P trial updates (each (P, *shape)) on the payload's grid (values, no gradient)."""
        raise NotImplementedError

    def cell_distance(self, trial: Sequence[Tensor]) -> Tensor:
        """(P,) float64: sum over coordinates of the squared distance (grid units) outside the code's cell,
        plus the grid's own constraints (a transmitted scale or norm); 0 at the truth."""
        raise NotImplementedError

    def decode(self) -> List[Tensor]:
        """The observed update with the cell that holds 0 decoded as 0."""
        return [t.clone() for t in self.observed]

    # ------------------------------------------------------------------ shared
    def before(self, trial: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """The chain's steps before the quantizer, applied to P trial updates."""
        return tuple(trial) if self._prefix_model is None else self._prefix_model.batched(tuple(trial))

    def cell_loss(self, trial: Sequence[Tensor]) -> Tensor:
        """(P,) mean squared cell distance per coordinate (float64)."""
        n = sum(t.numel() for t in self.observed)
        return self.cell_distance(self.before(trial)) / n

    def decode_values(self, q: Sequence[Tensor]) -> List[Tensor]:
        """Updates on this grid (each (P, *shape)) with the cell that holds 0 decoded as 0, as ``decode``
        does to the observed one."""
        return list(q)

    def transmitted(self, trial: Sequence[Tensor], decoded: bool = False) -> Tuple[Tensor, ...]:
        """What the client would send for P trial updates, on the payload's grid: the chain's earlier steps,
        then the quantizer on the observed grid (``decoded``: read with the zero cell as 0), with a
        straight-through (identity) gradient."""
        x = self.before(trial)
        with torch.no_grad():
            q = self.quantize(x)
            if decoded:
                q = self.decode_values(q)
        if not torch.is_grad_enabled():
            return tuple(q)
        return tuple(t + (qt - t).detach() for t, qt in zip(x, q))


def _bcast(v: Tensor, t: Tensor) -> Tensor:
    """A per-range scalar to broadcast over a (P, *shape) trial tensor, in its dtype and device."""
    return v.to(device=t.device, dtype=t.dtype)


class MinMaxGrid(Grid):
    """``quantize`` with nearest rounding: (lo, step) per tensor (the global range's for every tensor)."""
    kind = "minmax"
    quantizes = True

    def __init__(self, spec, observed, prefix=None):
        super().__init__(spec.label, observed, prefix)
        self.intervals = grid_intervals(spec.bits, spec.grid)
        try:
            ranges = payload_grid(self.observed, spec.bits, spec.range, spec.grid)
        except ValueError as exc:
            raise NoGrid(f"the observed update is not the payload of '{spec.label}' ({exc})") from None
        self.ranges = ranges * len(self.observed) if spec.range == "global" else ranges
        self.codes: List[Optional[Tensor]] = []
        for t, (lo, step) in zip(self.observed, self.ranges):
            self.codes.append(torch.round((t - lo) / step) if step > 0 else None)
        self.decodes = any(self._zero_code(i) is not None for i in range(len(self.observed)))
        self._cell_rows: dict = {}  # factored.CellRows per linear layer, made on first use

    def _zero_code(self, i: int) -> Optional[int]:
        """The code of the cell that holds 0 in tensor i's range, if 0 is in its range and sent off 0."""
        lo, step = self.ranges[i]
        if not step > 0:
            return None
        k0 = int(torch.round(-lo / step))
        if not 0 <= k0 <= self.intervals or float(k0 * step + lo) == 0.0:
            return None
        return k0

    def quantize(self, trial):
        out = []
        for t, (lo, step) in zip(trial, self.ranges):
            if not step > 0:  # a range the client sent unchanged
                out.append(t)
                continue
            out.append(quantize_on_grid(t, _bcast(lo, t), _bcast(step, t), self.intervals))
        return out

    @property
    def blockwise(self) -> bool:
        """Whether ``cell_distance`` takes factored linear gradients (``OuterSum``): no step before the
        quantizer, no range sent unchanged."""
        return self._prefix_model is None and all(c is not None for c in self.codes)

    def cell_distance(self, trial):
        total = 0
        for i, (t, (lo, step), codes) in enumerate(zip(trial, self.ranges, self.codes)):
            if isinstance(t, OuterSum):
                if blockwise(t) and codes is not None:
                    if i not in self._cell_rows:
                        self._cell_rows[i] = CellRows(codes.reshape(t.delta.shape[2], -1), _bcast(lo, t.delta),
                                                      _bcast(step, t.delta))
                    rows = self._cell_rows[i]
                    # with a gradient (Adam): one autograd node over the blocks, not a graph of every coordinate
                    grad = torch.is_grad_enabled() and (t.delta.requires_grad or t.inputs.requires_grad)
                    total = total + (outer_loss(t, cell_kernel(rows)) if grad else outer_cell_distance(t, rows))
                    continue
                t = t.dense()
            if codes is None:  # a range of one value, sent as it is: every coordinate is lo
                total = total + (t - _bcast(lo, t)).to(torch.float64).pow(2).reshape(t.shape[0], -1).sum(1)
                continue
            # the position on the grid in the client's own arithmetic (its dtype and operations), so a
            # coordinate the client rounded to code k lies within [k - 1/2, k + 1/2] exactly
            pos = ((t - _bcast(lo, t)) / _bcast(step, t)).to(torch.float64)
            k = codes.to(device=t.device, dtype=torch.float64)
            lower = (k - 0.5).clamp_min(0.0)  # nothing lies below lo: the range's minimum is code 0's value
            d = torch.relu(lower - pos) + torch.relu(pos - (k + 0.5))
            total = total + d.pow(2).reshape(t.shape[0], -1).sum(1)
        return total

    def decode(self):
        out = []
        for i, t in enumerate(self.observed):
            k0 = self._zero_code(i)
            out.append(t.clone() if k0 is None else torch.where(self.codes[i] == k0, torch.zeros_like(t), t))
        return out

    def decode_values(self, q):
        out = []
        for i, t in enumerate(q):
            k0 = self._zero_code(i)
            if k0 is None:
                out.append(t)
                continue
            lo, step = (_bcast(v, t) for v in self.ranges[i])
            c0 = torch.full((), float(k0), dtype=t.dtype, device=t.device) * step + lo  # the quantizer's own ops
            out.append(torch.where(t == c0, torch.zeros_like(t), t))
        return out


class SignGrid(Grid):
    """``sign``: one scale per tensor; +scale says x >= 0, -scale says x < 0."""
    kind = "sign"
    quantizes = True

    def __init__(self, spec, observed, prefix=None):
        super().__init__(spec.label, observed, prefix)
        try:
            self.scales = payload_scales(self.observed)
        except ValueError as exc:
            raise NoGrid(f"the observed update is not the payload of '{spec.label}' ({exc})") from None
        self.positive = [t >= 0 for t in self.observed]
        self._flips: dict = {}  # per linear layer, f / s for factored.sign_cell_kernel, made on first use

    @property
    def blockwise(self) -> bool:
        """Whether ``cell_distance`` takes factored linear gradients (``OuterSum``): no step before the sign."""
        return self._prefix_model is None

    def quantize(self, trial):
        out = []
        for t, s in zip(trial, self.scales):
            s = _bcast(s, t)
            out.append(torch.where(t >= 0, s, -s))
        return out

    def cell_distance(self, trial):
        total = 0
        for i, (t, s, pos_code) in enumerate(zip(trial, self.scales, self.positive)):
            if isinstance(t, OuterSum):
                if blockwise(t) and s > 0:
                    total = total + self._outer_cell_distance(i, t, s, pos_code)
                    continue
                t = t.dense()
            if not s > 0:  # an all-zero tensor: the client's was all zero
                total = total + t.to(torch.float64).pow(2).reshape(t.shape[0], -1).sum(1)
                continue
            x = t.to(torch.float64) / float(s)
            d = torch.where(pos_code.to(t.device), torch.relu(-x), torch.relu(x))
            # the transmitted scale, mean |x| in the client's own arithmetic, as a constraint per coordinate
            scale = t.abs().reshape(t.shape[0], -1).mean(1).to(torch.float64)
            total = total + d.pow(2).reshape(t.shape[0], -1).sum(1) + t[0].numel() * ((scale - float(s)) / float(s)) ** 2
        return total

    def _outer_cell_distance(self, i: int, t: OuterSum, s: Tensor, pos_code: Tensor) -> Tensor:
        """``cell_distance`` of a one-row ``OuterSum``: the coordinates blockwise (``factored.sign_cell_kernel``
        through ``outer_loss``), the scale from the factors (sum |d_i a_j| = sum |d_i| * sum |a_j|)."""
        d, a = t.delta[:, 0], t.inputs[:, 0]
        if i not in self._flips:
            sign = pos_code.reshape(d.shape[1], -1).to(d.dtype) * 2 - 1
            self._flips[i] = sign / _bcast(s, d)
        n = d.shape[1] * a.shape[1]
        scale = d.abs().sum(1, dtype=torch.float64) * a.abs().sum(1, dtype=torch.float64) / n
        return outer_loss(t, sign_cell_kernel(self._flips[i], _bcast(s, d))) + n * ((scale - float(s)) / float(s)) ** 2


class QSGDGrid(Grid):
    """``qsgd``: each bucket's norm; the code s*l says v lies within one unit norm/levels of s*l units."""
    kind = "qsgd"

    def __init__(self, spec, observed, prefix=None):
        super().__init__(spec.label, observed, prefix)
        self.levels, self.bucket = int(spec.levels), int(spec.bucket_size)
        self.norms, self.known = payload_norms(self.observed, self.levels, self.bucket)
        flat = torch.cat([t.reshape(-1) for t in self.observed]).double()
        self.n = flat.numel()
        self.pad = (-self.n) % self.bucket
        q = torch.cat([flat, flat.new_zeros(self.pad)]).view(-1, self.bucket)
        unit = torch.where(self.known, self.norms / self.levels, torch.ones_like(self.norms)).unsqueeze(1)
        self.codes = torch.round(q / unit)

    def quantize(self, trial):  # unbiased: its expectation on the observed norms is the update itself
        return list(trial)

    def _buckets(self, trial) -> Tensor:
        p = trial[0].shape[0]
        flat = torch.cat([t.reshape(p, -1) for t in trial], 1).to(torch.float64)
        return torch.cat([flat, flat.new_zeros(p, self.pad)], 1).view(p, -1, self.bucket)

    def cell_distance(self, trial):
        v = self._buckets(trial)
        known = self.known.to(v.device)
        norms = self.norms.to(v.device)
        unit = torch.where(known, norms / self.levels, torch.ones_like(norms))
        pos = v / unit.view(1, -1, 1)
        k = self.codes.to(v.device).unsqueeze(0)
        lower, upper = (k - 1).clamp_min(-self.levels), (k + 1).clamp_max(self.levels)
        d = (torch.relu(lower - pos) + torch.relu(pos - upper)) * known.view(1, -1, 1)
        # the transmitted norm: one constraint per bucket, weighted as its coordinates
        rel = (v.norm(dim=2) - norms) / torch.where(known, norms, torch.ones_like(norms))
        return d.pow(2).sum((1, 2)) + (self.bucket * rel.pow(2) * known).sum(1)


def observed_grid(obs, update: Optional[Sequence[Tensor]] = None) -> Grid:
    """The public grid of ``obs``'s payload (``update``: the same update on the search's device and dtype;
    default ``obs.update``); ``NoGrid`` (one line) when it has none to use."""

    chain = defence_steps(obs.defenses)
    if not chain:
        raise NoGrid("its update is sent in float32 (no quantizer): there is no grid to use")
    last, prefix = chain[-1], chain[:-1]
    update = obs.update if update is None else update
    if isinstance(last, Quantize) and last.bits < FLOAT_BITS:
        if last.rounding != "nearest":
            raise NoGrid(f"'{last.label}' rounds stochastically (unbiased, each code a random neighbour): its "
                         f"likelihood is ggl-eot's")
        _check_prefix(prefix)
        return MinMaxGrid(last, update, prefix)
    if isinstance(last, Sign):
        _check_prefix(prefix)
        return SignGrid(last, update, prefix)
    if isinstance(last, QSGD):
        _check_prefix(prefix)
        return QSGDGrid(last, update, prefix)
    names = "+".join(d.label for d in chain)
    raise NoGrid(f"its defence '{names}' does not end in a quantizer with a public grid (quantize, sign, qsgd)")


def grid_refusal(obs, need: str = "cell") -> Optional[str]:
    """Why ``obs`` has no grid for ``need`` (``cell``: any grid; ``quantize``: a deterministic quantizer to
    re-apply on the observed grid; ``decode``: a cell that holds 0 sent off 0), or None."""
    try:
        grid = observed_grid(obs)
    except NoGrid as exc:
        return str(exc)
    if need == "quantize" and not grid.quantizes:
        return (f"'{grid.label}' is unbiased randomness: its expectation on the observed grid is the update "
                f"itself (the non-adaptive attacker's); use ggl-cell or ggl-eot")
    if need == "decode" and not grid.decodes:
        return (f"'{grid.label}' sends no cell holding 0 off 0 (nothing to decode): the attacker itself "
                f"sees the same update")
    return None


def decoded_observation(obs):
    """A copy of ``obs`` whose update is its grid's ``decode`` (the zero cell as exactly 0)."""
    import dataclasses

    return dataclasses.replace(obs, update=observed_grid(obs).decode())


class ObservedGridModel:
    """``GGLObjective.defense`` for the observed-grid adaptive attacker: ``batched`` on P trial updates
    (each (P, *shape)), called on one update (``evaluation: loop``); ``Grid.transmitted`` either way
    (``decoded``: the zero cell read as 0, to match against the decoded observed update)."""

    def __init__(self, grid: Grid, decoded: bool = False):
        self.grid, self.decoded = grid, decoded
        self.active = True
        self._blocks: Optional[List[FixedGrid]] = None

    def block_grids(self) -> Optional[List[FixedGrid]]:
        """The payload's grid of each tensor as ``factored.FixedGrid`` (the search then quantizes factored
        linear gradients blockwise), or None: not a min/max grid, a step of the chain before the quantizer,
        or a range sent unchanged (step 0)."""
        grid = self.grid
        if not isinstance(grid, (MinMaxGrid, SignGrid)) or grid._prefix_model is not None:
            return None
        if self._blocks is None and isinstance(grid, SignGrid):
            self._blocks = [SignBlocks(_bcast(s, t)) for s, t in zip(grid.scales, grid.observed)]
        if self._blocks is None:
            blocks = []
            for i, t in enumerate(grid.observed):
                lo, step = (_bcast(v, t) for v in grid.ranges[i])
                if not step > 0:
                    return None
                k0 = grid._zero_code(i) if self.decoded else None
                # decode_values' c0, with the quantizer's own ops
                c0 = None if k0 is None else torch.full((), float(k0), dtype=t.dtype, device=t.device) * step + lo
                blocks.append(FixedGrid(lo, step, grid.intervals, c0))
            self._blocks = blocks
        return self._blocks

    def batched(self, tensors):
        return self.grid.transmitted(tensors, self.decoded)

    def __call__(self, tensors):
        return tuple(t[0] for t in self.grid.transmitted([t.unsqueeze(0) for t in tensors], self.decoded))
