"""Quantized matching losses and cell distances of factored linear-layer gradients (``OuterSum``).

A candidate's gradient of a linear layer seen on one row (batch 1) is the outer product ``delta x^T``:
its min/max are among the four products of the factors' extremes (the adaptive quantizer's own range),
the rows where ``delta`` is 0 hold exact zeros (one value on any grid: their loss comes from per-row
constants of the target), and the other rows are quantized and matched as one block per candidate,
never the whole (P, out, in) gradient. Grids: each candidate's own min/max (``RangeGrid``, the adaptive
attacker's) or the payload's (``FixedGrid``, the observed-grid attackers', decoded or not); and the cell
distance of ggl-cell (``outer_cell_distance``). The same values as the dense paths, in float64
(tests/test_attack_kernels.py, tests/test_grid_attackers.py).

With a gradient (the Adam phase), ``outer_loss`` sums an elementwise loss of the outer product per candidate
in one autograd node: forward writes each candidate's block once into a reused buffer, where the kernel
leaves the loss's derivative ``r``, and takes the two matrix-vector products ``r a`` (for delta) and
``r^T delta`` (for the inputs) while the block is in cache; backward only scales them. Autograd through the
dense product would keep a graph of temporaries of every coordinate instead. Kernels: the min/max cell
distance (``cell_kernel``), the observed-grid L2 with a straight-through quantizer (``quantized_l2_kernel``,
``SignBlocks`` for ``sign``), sign's cell distance (``sign_cell_kernel``) and ggl-eot's tent likelihood
(``tent_kernel``); their gradients equal autograd's on the dense path, in float64.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.attack.per_candidate import OuterSum
from ggl.defenses.quantize import _Grid, grid_intervals


# the smallest linear layer (weights) worth a block per candidate; a smaller one is cheaper materialised (a
# handful of kernel calls per candidate against one pass over the population's gradients)
BLOCKWISE_MIN = 1 << 16


def one_row(t) -> bool:
    """Whether ``t`` is an ``OuterSum`` of one row per candidate (a batch of one image): one outer product."""
    return isinstance(t, OuterSum) and t.delta.shape[1] == 1


def blockwise(t) -> bool:
    """Whether ``t`` goes through this module's kernels: a one-row ``OuterSum`` of >= BLOCKWISE_MIN weights."""
    return one_row(t) and t.delta.shape[2] * t.inputs.shape[2] >= BLOCKWISE_MIN


def extremes(t: Tensor | OuterSum) -> Tuple[Tensor, Tensor]:
    """(P,) minimum and maximum of each candidate's tensor; of a one-row ``OuterSum`` from its factors:
    min/max over i, j of fl(d_i a_j) = fl(min/max of the exact products), rounding being monotone."""
    if not one_row(t):
        r = t.dense() if isinstance(t, OuterSum) else t
        r = r.unsqueeze(1) if r.dim() == 1 else r
        dims = tuple(range(1, r.dim()))
        return r.amin(dims), r.amax(dims)
    d, a = t.delta[:, 0], t.inputs[:, 0]
    corners = torch.stack([d.amin(1), d.amax(1)], 1).unsqueeze(2) * torch.stack([a.amin(1), a.amax(1)], 1).unsqueeze(1)
    return corners.flatten(1).amin(1), corners.flatten(1).amax(1)


def candidate_grid(trial: Sequence, bits: int, range_mode: str = "global", grid: str = "project") -> List[RangeGrid]:
    """``quantize_candidates``' grids (one per tensor), from the extremes alone."""
    ranges = [extremes(t) for t in trial]
    intervals = grid_intervals(bits, grid)
    if range_mode == "global":
        lo = torch.stack([r[0] for r in ranges]).amin(0)
        hi = torch.stack([r[1] for r in ranges]).amax(0)
        return [RangeGrid(_Grid(lo, hi, intervals, real=True))] * len(trial)
    return [RangeGrid(_Grid(lo, hi, intervals, real=True)) for lo, hi in ranges]


class TargetRows:
    """Row statistics of one target layer (out, in), float64: row sums, row means and the squared deviation
    from the row mean (what the loss of a row of one repeated value needs, without cancellation)."""

    def __init__(self, target: Tensor):
        t64 = target.to(torch.float64)
        self.target = target
        self.n_in = target.shape[1]
        self.sums = t64.sum(1)
        self.means = self.sums / self.n_in
        self.centered = (t64 - self.means[:, None]).pow(2).sum(1)
        self.sq_norm = t64.pow(2).sum()


class RangeGrid:
    """Each candidate's own min/max grid (``quantize_candidates``'), for blocks of one candidate at a time."""

    def __init__(self, grid: _Grid):
        self.grid, self.clamp = grid, grid.overshoots

    def block_(self, block: Tensor, i: int) -> Tensor:
        """Candidate i's block on its grid, in place: ``_Grid.apply``'s nearest rounding, op for op."""
        g = self.grid
        block.sub_(g.lo[i]).div_(g.safe_step[i]).round_()
        if self.clamp:
            block.clamp_(0, g.intervals)
        return block.mul_(g.step[i]).add_(g.lo[i])

    def zero(self, p: int, like: Tensor) -> Tensor:
        """(P,) float64: the value 0 takes on each candidate's grid (the same ops, all candidates at once)."""
        g = self.grid
        z = like.new_zeros(p).sub_(g.lo).div_(g.safe_step).round_()
        if self.clamp:
            z.clamp_(0, g.intervals)
        return z.mul_(g.step).add_(g.lo).to(torch.float64)

    def dense(self, t: Tensor) -> Tensor:
        return self.grid.apply(t.unsqueeze(1) if t.dim() == 1 else t).view_as(t)


class FixedGrid:
    """One given grid (lo, step > 0) for every candidate, the observed payload's: ``quantize_on_grid``'s ops,
    then, with ``zero_level`` (the level of the cell that holds 0), that level read as 0 (decoded)."""

    def __init__(self, lo: Tensor, step: Tensor, intervals: int, zero_level: Optional[Tensor] = None):
        self.lo, self.step, self.intervals, self.zero_level = lo, step, intervals, zero_level

    def block_(self, block: Tensor, i: int = 0) -> Tensor:
        block.sub_(self.lo).div_(self.step).round_().clamp_(0, self.intervals).mul_(self.step).add_(self.lo)
        return block if self.zero_level is None else block.masked_fill_(block == self.zero_level, 0)

    def zero(self, p: int, like: Tensor) -> Tensor:
        return self.block_(like.new_zeros(1)).to(torch.float64).expand(p)

    def dense(self, t: Tensor) -> Tensor:
        return self.block_(t.clone())


def outer_quantized_match(t: OuterSum, rows: TargetRows, grid: RangeGrid | FixedGrid, kind: str = "l2") -> Tensor:
    """(P,) float64 matching loss (``kind``: l2 sum of squares, or cosine) of the quantized one-row
    ``OuterSum`` t against the target, one candidate at a time: its rows where delta is nonzero quantized
    as a block, the others (all one value, q(0)) from the target's row statistics."""
    p = t.delta.shape[0]
    q0 = grid.zero(p, t.delta)
    delta = t.delta[:, 0]
    idle = (delta == 0).to(torch.float64)  # (P, out): rows of exact zeros, each all q(0)
    target, n_in = rows.target, rows.n_in
    if kind == "l2":  # an idle row's sum of (c - t_j)^2 = its squared deviation + n_in (mean - c)^2
        loss = idle @ rows.centered + n_in * (idle * (rows.means - q0[:, None]).pow(2)).sum(1)
    else:
        dot, sq = q0 * (idle @ rows.sums), q0 * q0 * n_in * idle.sum(1)
    for i, (d, a) in enumerate(zip(delta, t.inputs[:, 0])):
        idx = d.nonzero().squeeze(1)
        block = d.index_select(0, idx).unsqueeze(1) * a  # fl(d_i a_j), as the dense product
        grid.block_(block, i)
        tb = target.index_select(0, idx).view(-1)
        flat = block.view(-1)
        # float32 sums as match_loss's (cascaded: closer than a BLAS dot's running sums)
        if kind == "l2":
            loss[i] += flat.sub_(tb).pow_(2).sum()
        else:
            dot[i] += (flat * tb).sum()
            sq[i] += flat.pow_(2).sum()
    if kind == "l2":
        return loss
    return 1.0 - dot / (sq.sqrt() * rows.sq_norm.sqrt()).clamp_min(1e-12)


def _cell_d2(pos: Tensor, k: Tensor) -> Tensor:
    """``MinMaxGrid.cell_distance``'s squared distance (grid units, float64) of pos outside the cell of code k."""
    lower = (k - 0.5).clamp_min(0.0)
    return (torch.relu(lower - pos) + torch.relu(pos - (k + 0.5))).pow(2)


class CellRows:
    """One layer's observed codes (out, in) on its fixed grid (lo, step, 0-dim, the trial's dtype), and each
    row's cell distance where a trial's row is all 0."""

    def __init__(self, codes: Tensor, lo: Tensor, step: Tensor):
        self.codes, self.lo, self.step = codes.to(torch.float64), lo, step
        self.codes32 = codes.to(lo.dtype)
        self.lower32, self.upper32 = (self.codes32 - 0.5).clamp_min_(0.0), self.codes32 + 0.5  # the cells' edges
        pos0 = (torch.zeros_like(lo) - lo) / step
        self.idle = _cell_d2(pos0.to(torch.float64), self.codes).sum(1)


def outer_cell_distance(t: OuterSum, rows: CellRows) -> Tensor:
    """(P,) float64 cell distance of a one-row ``OuterSum`` (``MinMaxGrid.cell_distance`` of its dense form):
    rows where delta is nonzero as a block, positions in the client's arithmetic and distances in the trial's
    dtype (float64's to its rounding; exactly 0 inside a cell: a difference's sign is exact), summed in
    float64; the other rows from ``rows.idle``. At most one of the two one-sided distances is nonzero."""
    delta = t.delta[:, 0]
    out = (delta == 0).to(torch.float64) @ rows.idle
    for i, (d, a) in enumerate(zip(delta, t.inputs[:, 0])):
        idx = d.nonzero().squeeze(1)
        block = d.index_select(0, idx).unsqueeze(1) * a  # fl(d_i a_j), as the dense product
        pos = block.sub_(rows.lo).div_(rows.step)
        k = rows.codes32.index_select(0, idx)
        below = (k - 0.5).clamp_min_(0.0).sub_(pos).relu_()  # lower - pos, nothing below lo
        above = pos.sub_(k.add_(0.5)).relu_()                  # pos - upper
        out[i] += below.pow_(2).sum(dtype=torch.float64) + above.pow_(2).sum(dtype=torch.float64)
    return out


# kernel(block, i) -> (the loss of candidate i's block, 0-dim float64; c), leaving d loss / d block / c in
# ``block`` (c scales the two small products instead of the block)
Kernel = Callable[[Tensor, int], Tuple[Tensor, float]]


class _OuterLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d: Tensor, a: Tensor, kernel: Kernel) -> Tensor:
        p = d.shape[0]
        block = d.new_empty(d.shape[1], a.shape[1])  # one candidate's, reused: it stays in cache
        loss = torch.empty(p, dtype=torch.float64, device=d.device)
        need_d, need_a = ctx.needs_input_grad[:2]  # both False without a gradient (CMA-ES): no products then
        grad_d, grad_a = torch.empty_like(d), torch.empty_like(a)
        for i in range(p):
            loss[i], c = kernel(torch.mul(d[i].unsqueeze(1), a[i], out=block), i)  # fl(d_i a_j), as the dense product
            # the loss's derivatives in the factors, while the block is in cache (backward only scales them)
            if need_d:
                torch.mv(block, a[i], out=grad_d[i]).mul_(c)
            if need_a:
                torch.mv(block.T, d[i], out=grad_a[i]).mul_(c)
        ctx.save_for_backward(grad_d, grad_a)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_d, grad_a = ctx.saved_tensors
        g = grad.to(grad_d.dtype).unsqueeze(1)
        need_d, need_a = ctx.needs_input_grad[:2]
        return grad_d * g if need_d else None, grad_a * g if need_a else None, None


def outer_loss(t: OuterSum, kernel: Kernel) -> Tensor:
    """(P,) float64 sum of an elementwise loss over each candidate's one-row ``OuterSum`` t, differentiable in
    its factors (see the module docstring): every row is written, the ones where delta is 0 too (their
    derivative in delta is not 0)."""
    return _OuterLoss.apply(t.delta[:, 0], t.inputs[:, 0], kernel)


def cell_kernel(rows: CellRows) -> Kernel:
    """``outer_cell_distance``'s distance and its derivative ``(2 / step) s``, with s = pos - clamp(pos, cell) the
    signed distance (fl(pos - lower) = -fl(lower - pos): the same squares as that kernel's)."""
    scratch: List[Tensor] = []

    def kernel(block: Tensor, i: int) -> Tuple[Tensor, float]:
        if not scratch:
            scratch.append(torch.empty_like(block))
        pos = block.sub_(rows.lo).div_(rows.step)
        signed = pos.sub_(torch.clamp(pos, rows.lower32, rows.upper32, out=scratch[0]))  # in the block
        return torch.square(signed, out=scratch[0]).sum(dtype=torch.float64), 2.0 / float(rows.step)
    return kernel


def quantized_l2_kernel(target: Tensor, grid: FixedGrid) -> Kernel:
    """``outer_quantized_match``'s L2 on the payload's grid (float32 sums) and the straight-through derivative
    ``2 (q(u) - t)``: the quantizer as identity, as ``Grid.transmitted`` models it for Adam."""
    scratch: List[Tensor] = []

    def kernel(block: Tensor, i: int) -> Tuple[Tensor, float]:
        if not scratch:
            scratch.append(torch.empty_like(block))
        diff = grid.block_(block, i).sub_(target)
        return torch.square(diff, out=scratch[0]).sum().to(torch.float64), 2.0
    return kernel


def tent_kernel(codes: Tensor, lo: Tensor, step: Tensor, tail: float) -> Kernel:
    """``ggl-eot``'s exact stochastic-rounding likelihood (``eot.tent_nll`` of ``(u - lo) / step - code``, in
    the trial's dtype, summed in float64) and its derivative: with m = min(|d|, 1 - tail),
    ``-log(1 - m) + relu(|d| - (1 - tail)) / tail`` and ``sign(d) / (1 - m) / step`` (the tangent's slope
    1 / tail past the edge, where 1 - m = tail). ``log(1 - m)``, not ``log1p(-m)``: torch's CPU ``log1p`` is
    not vectorised (8x ``log``'s time), and 1 - m is needed anyway; they differ by half an ulp of 1 where m is
    tiny (and the term with it)."""
    edge = 1.0 - tail
    scratch: List[Tensor] = []

    def kernel(block: Tensor, i: int) -> Tuple[Tensor, float]:
        if not scratch:
            scratch.extend(torch.empty_like(block) for _ in range(2))
        a, m = scratch
        d = block.sub_(lo).div_(step).sub_(codes)
        torch.abs(d, out=a)
        torch.clamp(a, max=edge, out=m)
        beyond = a.sub_(edge).relu_().sum(dtype=torch.float64) / tail
        kept = m.neg_().add_(1.0)  # 1 - m, the tent's probability
        inside = torch.log(kept, out=a).sum(dtype=torch.float64)
        d.sign_().div_(kept)
        return beyond - inside, 1.0 / float(step)
    return kernel


class SignBlocks:
    """``sign``'s payload grid for blocks: one scale s for every candidate (``SignGrid.quantize``'s
    ``where(u >= 0, s, -s)``, op for op), what ``outer_quantized_match`` and ``quantized_l2_kernel`` read."""

    def __init__(self, scale: Tensor):
        self.scale = scale

    def block_(self, block: Tensor, i: int = 0) -> Tensor:
        positive = block >= 0
        return block.fill_(-self.scale).masked_fill_(positive, self.scale)

    def zero(self, p: int, like: Tensor) -> Tensor:
        return self.scale.to(torch.float64).expand(p)  # 0 is sent as +s

    def dense(self, t: Tensor) -> Tensor:
        return torch.where(t >= 0, self.scale, -self.scale)


def sign_cell_kernel(flip: Tensor, scale: Tensor) -> Kernel:
    """``SignGrid.cell_distance``'s per-coordinate term of a block: (relu(-f u / s))^2, f = +1 where +s was sent
    and -1 where -s was, computed in the trial's dtype (float32: that path's float64 to its rounding), summed in
    float64; its derivative ``-(2 / s) f relu(-f u / s)``. ``flip`` holds f / s (out, in)."""
    def kernel(block: Tensor, i: int) -> Tuple[Tensor, float]:
        d = block.mul_(flip).neg_().relu_()  # the distance outside the sent sign's half-line, in scales
        loss = torch.square(d).sum(dtype=torch.float64)
        d.mul_(flip)
        return loss, -2.0
    return kernel
