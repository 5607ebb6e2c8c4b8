"""``ggl-cell``: GGL scored by the set-membership likelihood of a quantized payload.

Each code of a deterministic quantizer says in which rounding cell ``[c - step/2, c + step/2]`` of the
payload's public grid (``ggl.attack.grid``) the client's coordinate lies. The loss is that likelihood's
smooth continuation: the mean squared distance (in steps) of a trial update ``u`` outside its cells; 0 at
the truth, differentiable (no straight-through), blind to the zero cell's offset ``c0``. The
nearest-rounding twin of ``ggl-eot``'s tent likelihood. ``sign``: +scale says ``u >= 0``, -scale ``u < 0``,
plus the scale ``mean |u|`` as one squared relative error; ``qsgd``: level ``l`` with sign ``s`` says ``u``
lies within one unit ``||v|| / levels`` of ``s l`` units, plus the bucket norm as one squared relative
error. Refuses (one line) an observation without a grid: float32, stochastic min/max rounding
(``ggl-eot`` has its exact likelihood), a chain that does not end in a quantizer.

``inverting-gradients-cell``: pixel-space Inverting Gradients (its search, TV and options) scored by the same
cell loss instead of the cosine: a prior-free attacker with an exact gradient through the payload's cells.
Measured on q4 (reports/supplement_ig_grid/): 7-8 dB above ``inverting-gradients-decoded`` at rounds 0 and 3,
below it at round 9 at the sweep's budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ggl.attack import model_and_labels, run_search
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker
from ggl.attack.attackers.inverting_gradients import InvertingGradients
from ggl.attack.device import attack_device
from ggl.attack.grid import grid_refusal, observed_grid
from ggl.attack.objective import GGLObjective, kl_latent


def _objective_class():
    """GGL's objective with the cell loss as its matching term (defined lazily, as ``eot.py`` does)."""
    class CellObjective(GGLObjective):
        def __init__(self, obs, generator, labels, kl_weight: float = 0.0, evaluation: str = "batched",
                     model=None, device="cpu"):
            super().__init__(obs, generator, labels, loss="l2", kl_weight=kl_weight, adaptive=False,
                             evaluation=evaluation, model=model, device=device)
            self.grid = observed_grid(obs, self.target)
            # the payload's min/max cells take factored linear gradients blockwise (ggl/attack/factored.py);
            # other grids read the cells coordinate by coordinate
            self.factored_trial = self.device.type == "cpu" and bool(getattr(self.grid, "blockwise", False))

        def _kl(self, z):
            return self.kl_weight * kl_latent(z.reshape(z.shape[0], self.batch, self.latent_dim))

        def _total(self, trial, z):
            loss = self.grid.cell_loss(trial)
            return loss + self._kl(z) if self.kl_weight else loss

        def image_loss_reference(self, x, z):
            trial = tuple(t.unsqueeze(0) for t in self.sim.reference(x, self.labels))
            loss = self.grid.cell_loss(trial)
            return loss + self._kl(z) if self.kl_weight else loss

    return CellObjective


@register("ggl-cell")
@dataclass
class CellAttacker(Attacker):
    loss: ClassVar[str] = "cell"
    search: ClassVar[str] = "attack.optimizer (cmaes | adam | cmaes_adam)"
    models: ClassVar[str] = "adaptive"

    def describe(self) -> dict:
        return {**super().describe(), "grid": "cell"}

    def refusal(self, obs) -> Optional[str]:
        return grid_refusal(obs, "cell")

    def objective(self, obs, G, cfg, labels, model):
        return _objective_class()(obs, G, labels, kl_weight=cfg.kl_weight,
                                  evaluation=getattr(cfg, "evaluation", "batched"), model=model,
                                  device=attack_device(getattr(cfg, "device", "auto")))

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        model, labels = model_and_labels(obs, G, seed, labels, model)
        return run_search(self.objective(obs, G, cfg, labels, model), cfg, seed, tick=tick)


@register("inverting-gradients-cell", adaptive=False)
@dataclass
class CellInvertingGradients(InvertingGradients):
    loss: ClassVar[str] = "cell+tv"

    @property
    def models(self) -> str:  # type: ignore[override]
        return "adaptive"  # it reads the defence's public grid

    def describe(self) -> dict:
        return {**super().describe(), "grid": "cell"}

    def refusal(self, obs) -> Optional[str]:
        return grid_refusal(obs, "cell")

    def objective(self, obs, G, cfg, labels, model) -> GGLObjective:
        return _objective_class()(obs, G, labels, evaluation="batched", model=model)
