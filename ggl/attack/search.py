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
from typing import Callable, Dict, List, Optional, Sequence

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
    runs: List["SearchResult"] = field(default_factory=list)  # every search seed's result (this one first), S > 1


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


def search_seeds(seed: int, n: int) -> List[int]:
    """The seeds of ``n`` independent searches of one victim: the first is ``seed`` itself, so that
    ``attack.search_seeds: 1`` searches exactly as before."""
    return [seed] + [derived_seed(seed, 0x5EED, s) for s in range(1, n)]


def cmaes_search(objective: GGLObjective, *, population: int, generations: int, restarts: int,
                 sigma: float, bound: Optional[float], seeds: Sequence[int], bests: List[_Best],
                 progress: "_Progress", keep: int = 1, patience: Optional[int] = None) -> List[List[Tensor]]:
    """CMA-ES from the prior's mean, one independent run per seed, their generations evaluated together
    in one population; returns each seed's ``keep`` best candidates of its final generations."""
    from cmaes import CMA

    dim = objective.dim
    bounds = None if bound is None else np.tile([-bound, bound], (dim, 1)).astype(np.float64)
    finalists: List[List[tuple]] = [[] for _ in seeds]
    for r in range(restarts):
        opts = [CMA(mean=np.zeros(dim), sigma=sigma, bounds=bounds, population_size=population,
                    seed=derived_seed(seed, r, 0xC3A) % (2 ** 31)) for seed in seeds]
        stoppers = [Patience(patience) for _ in seeds]
        last: Dict[int, tuple] = {}          # seed index -> (its losses told, its candidates) of its last generation
        active = list(range(len(seeds)))
        for g in range(generations):
            xs = {i: ask_generation(opts[i], opts[i].population_size) for i in active}
            # each distribution's mean rides along (one extra candidate, never told to CMA-ES): late in
            # a run the recombined mean is often better than every sample around it
            blocks = [np.vstack([xs[i], opts[i].mean[None]]) for i in active]
            z_all = torch.from_numpy(np.vstack(blocks)).float().to(objective.device)
            with torch.no_grad():
                losses_all = objective(z_all)
            sizes = [len(b) for b in blocks]
            for i, z, losses in zip(active, z_all.split(sizes), losses_all.split(sizes)):
                bests[i].offer(z, losses)
                vals = np.nan_to_num(losses[:-1].detach().cpu().double().numpy(), nan=np.inf, posinf=1e300)
                opts[i].tell(list(zip(xs[i], vals.clip(max=1e300))))
                last[i] = (vals, z)
            progress.advance("cmaes", len(active))
            for i in list(active):
                if stoppers[i].exhausted(float(last[i][0].min())) or (patience is not None and opts[i].should_stop()):
                    progress.skip(generations - g - 1)
                    active.remove(i)
            if not active:
                break
        for i, (vals, z) in last.items():
            finalists[i] += [(float(vals[j]), z[j]) for j in np.argsort(vals)[:keep]]
    out = []
    for f in finalists:
        f.sort(key=lambda t: t[0])
        out.append([z for _, z in f[:keep]])
    return out


def adam_search(objective: GGLObjective, z0: Tensor, *, steps: int, lr: float, bound: Optional[float],
                bests: List[_Best], progress: "_Progress", patience: Optional[int] = None) -> None:
    """Adam on z (S * R, dim) through the generator and the trial update (double backprop): R restarts
    of each of the S searches (``bests``) in one batch. Candidates are independent rows and Adam is
    elementwise, so each search's rows follow the path they would follow alone. ``patience`` stops on the
    first search's best loss (``run_search`` batches several searches only without early stopping)."""
    z = z0.detach().clone().to(objective.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    stopper = Patience(patience)
    rows = z.shape[0] // len(bests)

    def offer(losses: Tensor) -> None:
        for best, zi, li in zip(bests, z.split(rows), losses.split(rows)):
            best.offer(zi, li)

    for k in range(steps):
        losses = objective(z)
        offer(losses)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if bound is not None:
            with torch.no_grad():
                z.clamp_(-bound, bound)
        progress.advance("adam", len(bests))
        if stopper.exhausted(bests[0].loss):
            progress.skip(steps - k - 1)
            break
    with torch.no_grad():
        offer(objective(z))
    for best in bests:
        best.curve.pop()  # the final check is not a step of its own


def run_search(objective: GGLObjective, cfg, seed: int, tick: Tick = None, watch: Watch = None) -> SearchResult:
    """Search with the optimiser of ``cfg`` (an ``AttackConfig``); the best candidate wins. With
    ``cfg.search_seeds`` = S > 1, S independent searches (seeds ``search_seeds(seed, S)``) run batched in
    one population (one after the other with early stopping, which is per search); the first search's
    result is returned with every search's in ``runs``."""
    seeds = search_seeds(seed, int(getattr(cfg, "search_seeds", 1) or 1))
    if len(seeds) > 1 and getattr(cfg, "patience", None) is not None:
        runs = [_search(objective, cfg, [s], tick, watch)[0] for s in seeds]
    else:
        runs = _search(objective, cfg, seeds, tick, watch)
    if len(runs) > 1:
        runs[0].runs = runs
    return runs[0]


def _search(objective: GGLObjective, cfg, seeds: List[int], tick: Tick, watch: Watch) -> List[SearchResult]:
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    objective.evaluations = 0
    bests = [_Best() for _ in seeds]
    progress = _Progress(objective, bests[0], search_units(cfg) * len(seeds), tick, watch)
    patience = getattr(cfg, "patience", None)
    objective.check_fits(1, objective.memory_key, grad=False)  # CMA-ES goes in chunks, of at least one
    if cfg.optimizer in ("adam", "cmaes_adam"):  # Adam's restarts (of every search) go through the graph at once
        objective.check_fits(cfg.adam_restarts * len(seeds), "attack.adam_restarts")
    with threadpool_limits(limits=1, user_api="blas"):
        if cfg.optimizer in ("cmaes", "cmaes_adam"):
            keep = cfg.adam_restarts if cfg.optimizer == "cmaes_adam" else 1
            finalists = cmaes_search(objective, population=cfg.population, generations=cfg.generations,
                                     restarts=cfg.restarts, sigma=cfg.sigma, bound=cfg.latent_bound,
                                     seeds=seeds, bests=bests, progress=progress, keep=keep, patience=patience)
        if cfg.optimizer in ("adam", "cmaes_adam"):
            if cfg.optimizer == "adam":
                z0 = torch.cat([torch.randn(cfg.adam_restarts, objective.dim,
                                            generator=torch.Generator().manual_seed(derived_seed(s, 0xADA)))
                                for s in seeds])
            else:  # fine-tune each search's best CMA-ES candidates (its overall best first)
                z0 = torch.cat([torch.stack([best.z] + f)[:cfg.adam_restarts] for best, f in zip(bests, finalists)])
            adam_search(objective, z0, steps=cfg.adam_steps, lr=cfg.adam_lr, bound=cfg.latent_bound,
                        bests=bests, progress=progress, patience=patience)
    share = 1.0 / len(seeds)  # batched searches share the evaluations and the seconds alike
    seconds = time.perf_counter() - start
    return [_result(objective, best, int(objective.evaluations * share), seconds * share) for best in bests]


def _result(objective: GGLObjective, best: _Best, evaluations: int, seconds: float) -> SearchResult:
    if best.z is None:  # every candidate was non-finite: fall back to the prior's mean
        best.z = torch.zeros(objective.dim, device=objective.device)
    z = best.z.view(objective.batch, objective.latent_dim)
    with torch.no_grad():
        images = objective.images(best.z.view(1, -1))[0]
    return SearchResult(z=z.detach().cpu(), images=images.detach().cpu(), labels=objective.labels.cpu().clone(),
                        loss=best.loss, curve=best.curve, evaluations=evaluations, seconds=seconds)
