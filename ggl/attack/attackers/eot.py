"""``ggl-eot``: GGL against a *randomised* defence, modelling its randomness instead of its mean.

A candidate ``z`` scores by how likely the transmitted update ``q`` is given its trial update
``u = update(G(z, y))`` and the public defence spec. ``mode: likelihood`` (default) is exact where the
chain ends in the randomised step: stochastic rounding on the public min/max grid (``P(c | u)`` a tent,
``max(0, 1 - |s - c|)``, continued linearly below ``TAIL``) or Gaussian noise of known std (there it is
the L2 attacker); earlier randomised steps are sampled ``samples`` times and averaged. ``mode: sample``
(or a chain ending in a deterministic step) is EOT, as in the official GGL CelebA script: the mean of
``match`` (l2 | cosine) over ``samples`` draws. Deterministic steps replay ``ggl.defenses``
(straight-through); the draws are seeded and shared by all candidates. A chain with nothing random is
refused with a one-line reason (use ``ggl-l2-adaptive``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.attack import model_and_labels, run_search
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker
from ggl.attack.factored import blockwise, outer_loss, tent_kernel
from ggl.attack.memory import GRAPH_FACTOR
from ggl.attack.objective import GGLObjective, kl_latent, match_loss
from ggl.attack.per_candidate import OuterSum
from ggl.core.checks import count
from ggl.core.errors import ConfigError, UserError
from ggl.core.seeding import derived_seed
from ggl.defenses import defenses_label, parse_chain, resolve_noise
from ggl.defenses.clip import EPS, Clip
from ggl.defenses.identity import Identity
from ggl.defenses.noise import Noise
from ggl.defenses.sign import Sign
from ggl.defenses.topk import TopK
from ggl.defenses.quantize import Quantize, quantize_rows

MODES = ("likelihood", "sample")
MATCHES = ("l2", "cosine")
# below this probability the tent's -log(1 - |d|) is continued by its tangent (finite, with a slope)
TAIL = 1e-2


def tent_nll(d: Tensor) -> Tensor:
    """-log max(0, 1 - |d|) per coordinate, continued linearly where the probability is below TAIL."""
    d = d.abs()
    edge = 1.0 - TAIL
    inside = -torch.log1p(-d.clamp(max=edge))
    return torch.where(d < edge, inside, -math.log(TAIL) + (d - edge) / TAIL)


def _observed_grid(qg: Tensor, bits: int) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """(codes, lo, step) of one range of a received min/max payload (its ops, in its dtype); None when the
    range is one value (sent unchanged: no grid)."""
    lo, hi = qg.min(), qg.max()
    step = (hi - lo) / (2 ** bits - 1)
    if not step > 0:
        return None
    return torch.round((qg - lo) / step), lo, step


def _ste(x: Tensor, value: Tensor) -> Tensor:
    """``value`` forward (bit-exact: ``x - x.detach()`` is exactly 0), identity backward (straight-through)."""
    return value.detach() + (x - x.detach())


class DefenseChainModel:
    """The client's defence chain applied to flat trial updates (..., N), randomised steps sampled."""

    def __init__(self, specs: Sequence, observed: Sequence[Tensor], samples: int = 8, mode: str = "likelihood",
                 match: str = "l2", seed: int = 0):
        parsed = parse_chain(specs, "observation.defenses")
        self.label = defenses_label(parsed)
        self.sizes = [t.numel() for t in observed]
        self.target = torch.cat([t.reshape(-1) for t in observed]).double()
        self.steps: List[Tuple[str, object]] = []
        for i, s in enumerate(parsed):
            if isinstance(s, Quantize):
                if s.bits < 32:
                    self.steps.append(("sround" if s.rounding == "stochastic" else "quantize", s))
            elif isinstance(s, Noise):
                std, _ = resolve_noise(parsed, i, "observation.defenses")
                if std > 0:
                    self.steps.append(("noise", float(std)))
            elif isinstance(s, Clip):
                self.steps.append(("clip", float(s.max_norm)))
            elif isinstance(s, Sign):
                self.steps.append(("sign", None))
            elif isinstance(s, TopK):
                self.steps.append(("mask", self.target != 0))
            elif not isinstance(s, Identity):
                raise UserError(f"attacker 'ggl-eot' has no model of defence '{getattr(s, 'name', s)}'")
        self.randomised = any(k in ("sround", "noise") for k, _ in self.steps)
        self.exact = mode == "likelihood" and bool(self.steps) and self.steps[-1][0] in ("sround", "noise")
        self.match = match
        sampled = self.steps[:-1] if self.exact else self.steps
        self.samples = samples if any(k in ("sround", "noise") for k, _ in sampled) else 1
        gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
        n = len(self.target)
        self.draws = {}  # step index -> (K, N) draws, fixed for the whole search
        for j, (kind, _) in enumerate(sampled):
            if kind == "sround":
                self.draws[j] = torch.rand(self.samples, n, generator=gen, dtype=torch.float64)
            elif kind == "noise":
                self.draws[j] = torch.randn(self.samples, n, generator=gen, dtype=torch.float64)
        self._cache = {}

    # ------------------------------------------------------------------ pieces
    def _draw(self, j: int, like: Tensor) -> Tensor:
        key = (j, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self.draws[j].to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _groups(self, x: Tensor, range_mode: str) -> List[Tensor]:
        return [x] if range_mode == "global" else list(torch.split(x, self.sizes, dim=-1))

    def _quantize(self, x: Tensor, spec, noise: Optional[Tensor]) -> Tensor:
        """``ggl.defenses.quantize.quantize_rows`` over the last dimension (per range group)."""
        levels = 2 ** spec.bits - 1
        noise_groups = self._groups(noise, spec.range) if noise is not None else None
        out = [quantize_rows(part, levels, noise_groups[g] if noise is not None else None)
               for g, part in enumerate(self._groups(x, spec.range))]
        return _ste(x, torch.cat(out, -1))

    def transform(self, x: Tensor, steps) -> Tensor:
        """Apply ``steps`` to trial updates x (P, N) -> (K, P, N) (K = 1 without sampled steps)."""
        x = x.unsqueeze(0)
        for j, (kind, arg) in enumerate(steps):
            if kind == "quantize":
                x = self._quantize(x, arg, None)
            elif kind == "sround":
                x = self._quantize(x, arg, self._draw(j, x).unsqueeze(1))
            elif kind == "noise":
                x = x + arg * self._draw(j, x).unsqueeze(1)
            elif kind == "clip":
                x = x * (arg / (x.norm(dim=-1, keepdim=True) + EPS)).clamp(max=1.0)
            elif kind == "sign":
                parts = torch.split(x, self.sizes, dim=-1)
                signed = [torch.where(p >= 0, p.abs().mean(-1, keepdim=True), -p.abs().mean(-1, keepdim=True))
                          for p in parts]
                x = _ste(x, torch.cat(signed, -1))
            elif kind == "mask":
                x = x * arg.to(device=x.device, dtype=x.dtype)
        return x

    def _nll(self, x: Tensor) -> Tensor:
        """(K, P) exact negative log-likelihood of the observed update given x (K, P, N) before the last step.
        Summed in float64: on a large model the likelihoods of two candidates differ in the 6th digit."""
        kind, arg = self.steps[-1]
        q = self.target.to(device=x.device, dtype=x.dtype)
        if kind == "noise":
            return ((x - q) ** 2).sum(-1, dtype=torch.float64) / (2 * arg ** 2)
        total = torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device)
        for part, qg in zip(self._groups(x, arg.range), self._groups(q, arg.range)):
            grid = _observed_grid(qg, arg.bits)
            if grid is None:  # the quantizer sent this group unchanged (all equal): no grid to score on
                continue
            codes, lo, step = grid
            total = total + tent_nll((part - lo) / step - codes).sum(-1, dtype=torch.float64)
        return total

    def tent_grids(self, dtype: torch.dtype, device) -> Optional[List[Tuple[Tensor, Tensor, Tensor]]]:
        """Per tensor of the update, (codes, lo, step) of ``_nll``'s grid (its ops, in ``dtype``), when the loss is
        that likelihood alone: the chain is one stochastic-rounding step with a grid for every range; else None."""
        if not (self.exact and len(self.steps) == 1 and self.steps[0][0] == "sround"):
            return None
        spec = self.steps[0][1]
        q = self.target.to(device=device, dtype=dtype)
        out = [_observed_grid(qg, spec.bits) for qg in self._groups(q, spec.range)]
        if any(grid is None for grid in out):
            return None
        if spec.range == "global":
            codes, lo, step = out[0]
            return [(c, lo, step) for c in torch.split(codes, self.sizes)]
        return out

    def loss(self, trial: Tensor) -> Tensor:
        """(P,) losses (float64) of flat trial updates (P, N)."""
        n = trial.shape[-1]
        if self.exact:
            nll = self._nll(self.transform(trial, self.steps[:-1]))
            k = nll.shape[0]
            return (-(torch.logsumexp(-nll, 0) - math.log(k))) / n
        out = self.transform(trial, self.steps)
        k, p = out.shape[:2]
        layers = tuple(torch.split(out.reshape(k * p, n), self.sizes, dim=-1))
        target = [t.to(trial.dtype) for t in torch.split(self.target.to(trial.device), self.sizes)]
        return match_loss(layers, target, self.match).view(k, p).double().mean(0)


def _objective_class():
    """GGL's objective with the chain's likelihood / EOT loss as its matching term (defined lazily so
    the registry imports without the search stack)."""
    class EOTObjective(GGLObjective):
        def __init__(self, obs, generator, labels, chain: DefenseChainModel, kl_weight: float = 0.0, model=None):
            super().__init__(obs, generator, labels, loss="l2", kl_weight=kl_weight, adaptive=False,
                             evaluation="batched", model=model)
            self.chain = chain
            # the likelihood of one stochastic rounding reads each coordinate alone: a CPU search takes linear
            # layers' outer products blockwise (factored.outer_loss); otherwise the chain transforms the flat
            # updates themselves
            dtype = self.target[0].dtype
            self.tent = chain.tent_grids(dtype, self.device) if self.device.type == "cpu" else None
            self.factored_trial = self.tent is not None
            self.memory_key, self.memory_value = "attack.attacker_options.ggl-eot.samples", chain.samples

        def candidate_bytes(self, grad):  # + the chain's K transformed copies of each trial update
            extra = 3 * self.chain.samples * len(self.chain.target) * 8
            return super().candidate_bytes(grad) + extra * (GRAPH_FACTOR if grad else 1)

        def _total(self, trial, z):
            if self.factored_trial:
                loss = self._tent_loss(trial)
            else:
                loss = self.chain.loss(torch.cat([t.flatten(1) for t in trial], 1))
            if self.kl_weight:
                loss = loss + self.kl_weight * kl_latent(z.reshape(z.shape[0], self.batch, self.latent_dim))
            return loss

        def _tent_loss(self, trial):
            """``chain.loss`` of the exact tent (K = 1: the NLL per coordinate), linear layers blockwise."""
            total = 0
            for t, (codes, lo, step) in zip(trial, self.tent):
                if blockwise(t):
                    rows = codes.view(t.delta.shape[2], -1)
                    total = total + outer_loss(t, tent_kernel(rows, lo, step, TAIL))
                    continue
                t = t.dense() if isinstance(t, OuterSum) else t
                total = total + tent_nll((t.reshape(t.shape[0], -1) - lo) / step - codes).sum(-1, dtype=torch.float64)
            return total / len(self.chain.target)

    return EOTObjective


@register("ggl-eot", order=50, compare_with=("ggl-l2-adaptive", "ggl-l2"))
@dataclass
class EOTAttacker(Attacker):
    samples: int = 8            # draws of each sampled randomised step (K)
    mode: str = "likelihood"    # likelihood (exact where the chain ends in the random step) | sample (EOT)
    match: str = "l2"           # matching loss of the sampled EOT: l2 | cosine
    search: ClassVar[str] = "attack.optimizer (cmaes | adam | cmaes_adam)"
    models: ClassVar[str] = "eot"

    @property
    def loss(self) -> str:  # type: ignore[override]
        return "likelihood" if self.mode == "likelihood" else f"eot-{self.match}"

    def check(self, key: str) -> None:
        count(self.samples, f"{key}.samples", "attacker_options.EOTAttacker.samples")
        if self.mode not in MODES:
            raise ConfigError(f"config key '{key}.mode' = {self.mode!r} is not one of {', '.join(MODES)}")
        if self.match not in MATCHES:
            raise ConfigError(f"config key '{key}.match' = {self.match!r} is not one of {', '.join(MATCHES)}")

    def chain(self, obs, seed: int = 0) -> DefenseChainModel:
        return DefenseChainModel(obs.defenses, obs.update, self.samples, self.mode, self.match, seed)

    def refusal(self, obs) -> Optional[str]:
        chain = self.chain(obs)
        if not chain.randomised:
            return (f"its defence '{chain.label}' is deterministic (no stochastic rounding, no noise): there is "
                    f"no randomness to take an expectation over; use ggl-l2-adaptive")
        return None

    def objective(self, obs, G, cfg, labels, model, seed: int = 0):
        """The search's objective: GGL's, with the chain's likelihood / EOT loss (draws seeded by ``seed``)."""
        chain = self.chain(obs, derived_seed(seed, 0xE07))
        return _objective_class()(obs, G, labels, chain, kl_weight=cfg.kl_weight, model=model)

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        model, labels = model_and_labels(obs, G, seed, labels, model)
        return run_search(self.objective(obs, G, cfg, labels, model, seed), cfg, seed, tick=tick)
