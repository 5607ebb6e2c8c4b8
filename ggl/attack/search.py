"""Latent search: CMA-ES (``cmaes``), Adam through the generator, or CMA-ES then Adam.

The reconstruction is the best candidate by loss over the whole search. numpy's BLAS threads (used
inside ``cmaes``) are pinned to 1 for the search: on 2 cores an unpinned OpenBLAS fighting torch's
threads made each generation ~4x slower.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import Tensor

from ggl.attack.objective import GGLObjective
from ggl.seeding import derived_seed

Tick = Optional[Callable[[int], None]]


@dataclass
class SearchResult:
    z: Tensor                      # (B, latent_dim) best latent
    images: Tensor                 # (B, C, H, W) the reconstruction G(z, labels)
    labels: Tensor                 # (B,) labels used for the search
    loss: float                    # its loss
    curve: List[float] = field(default_factory=list)  # best-so-far loss per generation / Adam step
    evaluations: int = 0
    seconds: float = 0.0


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
                 sigma: float, bound: Optional[float], seed: int, best: _Best, tick: Tick = None,
                 keep: int = 1) -> List[Tensor]:
    """CMA-ES from the prior's mean; returns the ``keep`` best candidates of the final generations."""
    from cmaes import CMA

    dim = objective.dim
    bounds = None if bound is None else np.tile([-bound, bound], (dim, 1)).astype(np.float64)
    finalists: List[tuple] = []
    for r in range(restarts):
        opt = CMA(mean=np.zeros(dim), sigma=sigma, bounds=bounds, population_size=population,
                  seed=derived_seed(seed, r, 0xC3A) % (2 ** 31))
        for _ in range(generations):
            xs = ask_generation(opt, opt.population_size)
            # the distribution's mean rides along (one extra candidate, never told to CMA-ES): late in
            # a run the recombined mean is often better than every sample around it
            z = torch.from_numpy(np.vstack([xs, opt.mean[None]])).float()
            with torch.no_grad():
                losses = objective(z)
            best.offer(z, losses)
            losses = losses[:-1]
            vals = np.nan_to_num(losses.double().numpy(), nan=np.inf, posinf=1e300)
            opt.tell(list(zip(xs, vals.clip(max=1e300))))
            if tick:
                tick(1)
        order = np.argsort(vals)[:keep]
        finalists += [(float(vals[i]), z[i]) for i in order]
    finalists.sort(key=lambda t: t[0])
    return [z for _, z in finalists[:keep]]


def adam_search(objective: GGLObjective, z0: Tensor, *, steps: int, lr: float, bound: Optional[float],
                best: _Best, tick: Tick = None) -> None:
    """Adam on z (R, dim) through the generator and the trial update (double backprop), R restarts
    in one batch."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        losses = objective(z)
        best.offer(z, losses)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if bound is not None:
            with torch.no_grad():
                z.clamp_(-bound, bound)
        if tick:
            tick(1)
    with torch.no_grad():
        best.offer(z, objective(z))
        best.curve.pop()  # the final check is not a step of its own


def run_search(objective: GGLObjective, cfg, seed: int, tick: Tick = None) -> SearchResult:
    """Search with the optimiser of ``cfg`` (an ``AttackConfig``); the best candidate wins."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    objective.evaluations = 0
    best = _Best()
    gen = torch.Generator().manual_seed(derived_seed(seed, 0xADA))
    with threadpool_limits(limits=1, user_api="blas"):
        if cfg.optimizer in ("cmaes", "cmaes_adam"):
            keep = cfg.adam_restarts if cfg.optimizer == "cmaes_adam" else 1
            finalists = cmaes_search(objective, population=cfg.population, generations=cfg.generations,
                                     restarts=cfg.restarts, sigma=cfg.sigma, bound=cfg.latent_bound,
                                     seed=seed, best=best, tick=tick, keep=keep)
        if cfg.optimizer in ("adam", "cmaes_adam"):
            if cfg.optimizer == "adam":
                z0 = torch.randn(cfg.adam_restarts, objective.dim, generator=gen)
            else:  # fine-tune the best CMA-ES candidates (the overall best first)
                z0 = torch.stack([best.z] + finalists)[:cfg.adam_restarts]
            adam_search(objective, z0, steps=cfg.adam_steps, lr=cfg.adam_lr, bound=cfg.latent_bound,
                        best=best, tick=tick)
    if best.z is None:  # every candidate was non-finite: fall back to the prior's mean
        best.z = torch.zeros(objective.dim)
    z = best.z.view(objective.batch, objective.latent_dim)
    with torch.no_grad():
        images = objective.images(best.z.view(1, -1))[0]
    return SearchResult(z=z, images=images.detach(), labels=objective.labels.clone(), loss=best.loss,
                        curve=best.curve, evaluations=objective.evaluations,
                        seconds=time.perf_counter() - start)
