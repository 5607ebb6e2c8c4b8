"""Latent search: CMA-ES (``cmaes``), Adam through the generator, or CMA-ES then Adam.

The reconstruction is the best candidate by loss over the whole search. numpy's BLAS threads (inside
``cmaes``) are pinned to 1: an unpinned OpenBLAS fights torch's threads (``benchmarks/README.md``).
Candidates live on ``attack.device``; only the losses CMA-ES is told come back to the CPU. ``watch``
gets a ``SearchStep`` after every generation / Adam step (the best loss so far, the best reconstruction
on demand): the attack's W&B run streams from it and ``benchmarks/bench_budget.py`` draws its curve.

Early stopping (``attack.patience``): a phase (one CMA-ES restart, the Adam fine-tuning) ends once its
best loss has not improved by more than ``REL_IMPROVEMENT`` (relative) for ``patience`` generations /
steps; with it on, CMA-ES also ends where ``cmaes`` itself says the run has converged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import Tensor

from ggl.attack.objective import GGLObjective
from ggl.core.seeding import derived_seed

Tick = Optional[Callable[[int], None]]
REL_IMPROVEMENT = 1e-3  # a loss that falls by less than 0.1% is no improvement for early stopping


@dataclass
class SearchResult:
    z: Tensor                      # (B, latent_dim) best latent
    images: Tensor                 # (B, C, H, W) the reconstruction G(z, labels)
    labels: Tensor                 # (B,) labels used for the search
    loss: float                    # its loss
    curve: List[float] = field(default_factory=list)  # best-so-far loss per generation / Adam step
    evaluations: int = 0
    seconds: float = 0.0


@dataclass
class SearchStep:
    """What a watcher sees after each generation / Adam step."""
    step: int                      # units done (generations + Adam steps, skipped ones included)
    total: int                     # units of the full budget
    phase: str                     # cmaes | adam
    loss: float                    # best loss so far
    objective: GGLObjective
    best: "_Best"

    def images(self) -> Optional[Tensor]:
        """The best reconstruction so far (B, C, H, W) on the CPU; None before any finite loss."""
        if self.best.z is None:
            return None
        with torch.no_grad():
            return self.objective.images(self.best.z.view(1, -1))[0].detach().cpu()


Watch = Optional[Callable[[SearchStep], None]]


class Patience:
    """Stop once the best loss has not improved (by > ``REL_IMPROVEMENT``) for ``patience`` updates;
    ``patience=None`` never stops."""

    def __init__(self, patience: Optional[int]):
        self.patience, self.best, self.stale = patience, float("inf"), 0

    def exhausted(self, loss: float) -> bool:
        if loss < self.best - REL_IMPROVEMENT * abs(self.best) or not np.isfinite(self.best):
            self.best, self.stale = min(loss, self.best), 0
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


class _Progress:
    """Counts units for the bar (``tick``) and the watcher; skipped units of a stopped phase count."""

    def __init__(self, objective: GGLObjective, best: "_Best", total: int, tick: Tick, watch: Watch):
        self.objective, self.best, self.total, self.tick, self.watch = objective, best, total, tick, watch
        self.step = 0

    def advance(self, phase: str, n: int = 1) -> None:
        self.step += n
        if self.tick:
            self.tick(n)
        if self.watch:
            self.watch(SearchStep(self.step, self.total, phase, self.best.loss, self.objective, self.best))

    def skip(self, n: int) -> None:
        self.step += n
        if self.tick and n:
            self.tick(n)


def search_units(cfg) -> int:
    """Progress-bar units one search takes (CMA-ES generations + Adam steps)."""
    n = 0
    if cfg.optimizer in ("cmaes", "cmaes_adam"):
        n += cfg.generations * cfg.restarts
    if cfg.optimizer in ("adam", "cmaes_adam"):
        n += cfg.adam_steps
    return n


class _Best:
    def __init__(self):
        self.loss = float("inf")
        self.z: Optional[Tensor] = None
        self.curve: List[float] = []

    def offer(self, z: Tensor, losses: Tensor) -> None:
        losses = losses.detach()
        finite = torch.isfinite(losses)
        if finite.any():
            i = int(torch.where(finite, losses, torch.full_like(losses, float("inf"))).argmin())
            if float(losses[i]) < self.loss:
                self.loss, self.z = float(losses[i]), z[i].detach().clone()
        self.curve.append(self.loss)


def ask_generation(opt, n: int) -> np.ndarray:
    """One CMA-ES generation of ``n`` candidates (n, dim).

    ``cmaes``' ``ask()`` draws one candidate at a time and rebuilds ``B @ diag(D)`` (O(dim^3)) for
    each draw: 32 ms per generation of 50 in 128 dimensions here, as much as evaluating them. Without
    bounds this draws the same candidates (the optimizer's own RNG stream, same order) with one matrix
    product; with bounds, or if the package's internals differ, it falls back to ``ask()``.
    ``tell()`` recomputes everything from the solutions, so it is unaffected.
    """
    try:
        if opt._bounds is None:
            B, D = opt._eigen_decomposition()
            z = opt._rng.randn(n, opt.dim)
            return opt._mean + opt._sigma * (z @ (B * D).T)
    except AttributeError:
        pass
    return np.stack([opt.ask() for _ in range(n)])


def cmaes_search(objective: GGLObjective, *, population: int, generations: int, restarts: int,
                 sigma: float, bound: Optional[float], seed: int, best: _Best, progress: "_Progress",
                 keep: int = 1, patience: Optional[int] = None) -> List[Tensor]:
    """CMA-ES from the prior's mean; returns the ``keep`` best candidates of the final generations."""
    from cmaes import CMA

    dim = objective.dim
    bounds = None if bound is None else np.tile([-bound, bound], (dim, 1)).astype(np.float64)
    finalists: List[tuple] = []
    for r in range(restarts):
        opt = CMA(mean=np.zeros(dim), sigma=sigma, bounds=bounds, population_size=population,
                  seed=derived_seed(seed, r, 0xC3A) % (2 ** 31))
        stopper = Patience(patience)
        for g in range(generations):
            xs = ask_generation(opt, opt.population_size)
            # the distribution's mean rides along (one extra candidate, never told to CMA-ES): late in
            # a run the recombined mean is often better than every sample around it
            z = torch.from_numpy(np.vstack([xs, opt.mean[None]])).float().to(objective.device)
            with torch.no_grad():
                losses = objective(z)
            best.offer(z, losses)
            losses = losses[:-1]
            vals = np.nan_to_num(losses.detach().cpu().double().numpy(), nan=np.inf, posinf=1e300)
            opt.tell(list(zip(xs, vals.clip(max=1e300))))
            progress.advance("cmaes")
            if stopper.exhausted(float(vals.min())) or (patience is not None and opt.should_stop()):
                progress.skip(generations - g - 1)
                break
        order = np.argsort(vals)[:keep]
        finalists += [(float(vals[i]), z[i]) for i in order]
    finalists.sort(key=lambda t: t[0])
    return [z for _, z in finalists[:keep]]


def adam_search(objective: GGLObjective, z0: Tensor, *, steps: int, lr: float, bound: Optional[float],
                best: _Best, progress: "_Progress", patience: Optional[int] = None) -> None:
    """Adam on z (R, dim) through the generator and the trial update (double backprop), R restarts
    in one batch."""
    z = z0.detach().clone().to(objective.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    stopper = Patience(patience)
    for k in range(steps):
        losses = objective(z)
        best.offer(z, losses)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if bound is not None:
            with torch.no_grad():
                z.clamp_(-bound, bound)
        progress.advance("adam")
        if stopper.exhausted(best.loss):
            progress.skip(steps - k - 1)
            break
    with torch.no_grad():
        best.offer(z, objective(z))
        best.curve.pop()  # the final check is not a step of its own


def run_search(objective: GGLObjective, cfg, seed: int, tick: Tick = None, watch: Watch = None) -> SearchResult:
    """Search with the optimiser of ``cfg`` (an ``AttackConfig``); the best candidate wins."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    objective.evaluations = 0
    best = _Best()
    progress = _Progress(objective, best, search_units(cfg), tick, watch)
    patience = getattr(cfg, "patience", None)
    gen = torch.Generator().manual_seed(derived_seed(seed, 0xADA))
    objective.check_fits(1, objective.memory_key, grad=False)  # CMA-ES goes in chunks, of at least one
    if cfg.optimizer in ("adam", "cmaes_adam"):  # Adam's restarts go through the graph at once
        objective.check_fits(cfg.adam_restarts, "attack.adam_restarts")
    with threadpool_limits(limits=1, user_api="blas"):
        if cfg.optimizer in ("cmaes", "cmaes_adam"):
            keep = cfg.adam_restarts if cfg.optimizer == "cmaes_adam" else 1
            finalists = cmaes_search(objective, population=cfg.population, generations=cfg.generations,
                                     restarts=cfg.restarts, sigma=cfg.sigma, bound=cfg.latent_bound,
                                     seed=seed, best=best, progress=progress, keep=keep, patience=patience)
        if cfg.optimizer in ("adam", "cmaes_adam"):
            if cfg.optimizer == "adam":
                z0 = torch.randn(cfg.adam_restarts, objective.dim, generator=gen)
            else:  # fine-tune the best CMA-ES candidates (the overall best first)
                z0 = torch.stack([best.z] + finalists)[:cfg.adam_restarts]
            adam_search(objective, z0, steps=cfg.adam_steps, lr=cfg.adam_lr, bound=cfg.latent_bound,
                        best=best, progress=progress, patience=patience)
    if best.z is None:  # every candidate was non-finite: fall back to the prior's mean
        best.z = torch.zeros(objective.dim, device=objective.device)
    z = best.z.view(objective.batch, objective.latent_dim)
    with torch.no_grad():
        images = objective.images(best.z.view(1, -1))[0]
    return SearchResult(z=z.detach().cpu(), images=images.detach().cpu(), labels=objective.labels.cpu().clone(),
                        loss=best.loss, curve=best.curve, evaluations=objective.evaluations,
                        seconds=time.perf_counter() - start)
