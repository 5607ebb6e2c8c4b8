"""``ggl-l2-observed-grid`` / ``ggl-cosine-observed-grid``: the adaptive GGL attacker, with each trial
update quantized on the *payload's* public grid instead of on the trial's own.

``ggl-l2-adaptive`` quantizes a trial on the trial's own min/max, the victim was quantized on the victim's:
the grids agree at a fresh model, not at a trained one. These quantize every trial on the payload's ``lo``
and ``step`` (``ggl.attack.grid``) with the client's very operations (bit for bit on the true image's
update), straight-through for Adam; ``decoded: true`` (default) reads observed and trial updates with the
zero cell decoded as 0, taking the common offset ``c0`` out of the cosine. ``sign`` uses the payload's
scales; steps before the quantizer (clip) are replayed as the adaptive attacker does. Refuses (one line)
an observation without a deterministic grid: float32, stochastic rounding (``ggl-eot``), QSGD
(``ggl-cell``), a chain that does not end in the quantizer.

``inverting-gradients-observed-grid``: pixel-space Inverting Gradients (its search, cosine, TV and options)
matching through the same observed-grid model, decoded. Inverting Gradients is the strongest attacker on
trained models without a defence; this is it given what a quantized payload makes public. Measured on q4
(reports/supplement_ig_grid/): below ``inverting-gradients-decoded`` at every round, since the
straight-through rounding leaves the pixel-space signed Adam little to follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ggl.attack import GGLObjective, model_and_labels, run_search
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker
from ggl.attack.attackers.inverting_gradients import InvertingGradients
from ggl.attack.device import attack_device
from ggl.attack.grid import ObservedGridModel, grid_refusal, observed_grid


def on_observed_grid(objective: GGLObjective, obs, decoded: bool) -> GGLObjective:
    """``objective`` with the payload's grid as its defence model (``decoded``: both sides with the zero cell
    read as 0, where the grid has one)."""
    grid = observed_grid(obs, objective.target)
    decoded = decoded and grid.decodes
    objective.defense = ObservedGridModel(grid, decoded)
    if decoded:
        objective.target = grid.decode()
    # the payload's min/max grid quantizes factored linear gradients blockwise (ggl/attack/factored.py);
    # another grid reads the trial updates themselves
    objective.factored_trial = objective.device.type == "cpu" and objective.defense.block_grids() is not None
    return objective


@register("ggl-l2-observed-grid", loss_kind="l2")
@register("ggl-cosine-observed-grid", loss_kind="cosine")
@dataclass
class ObservedGridAttacker(Attacker):
    loss_kind: str = "l2"
    decoded: bool = True        # match in decoded values: the zero cell read as 0 in the observed update and in
    #                             each quantized trial (where the grid has such a cell); false: the levels as sent
    search: ClassVar[str] = "attack.optimizer (cmaes | adam | cmaes_adam)"
    models: ClassVar[str] = "adaptive"

    @property
    def loss(self) -> str:  # type: ignore[override]
        return self.loss_kind

    def describe(self) -> dict:
        return {**super().describe(), "grid": "observed"}

    def refusal(self, obs) -> Optional[str]:
        return grid_refusal(obs, "quantize")

    def objective(self, obs, G, cfg, labels, model):
        """GGL's objective with the observed-grid quantizer as its defence model."""

        objective = GGLObjective(obs, G, labels, loss=self.loss_kind, kl_weight=cfg.kl_weight, adaptive=False,
                                 evaluation=getattr(cfg, "evaluation", "batched"), model=model,
                                 device=attack_device(getattr(cfg, "device", "auto")))
        return on_observed_grid(objective, obs, self.decoded)

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        model, labels = model_and_labels(obs, G, seed, labels, model)
        return run_search(self.objective(obs, G, cfg, labels, model), cfg, seed, tick=tick)


@register("inverting-gradients-observed-grid", adaptive=False)
@dataclass
class ObservedGridInvertingGradients(InvertingGradients):
    @property
    def models(self) -> str:  # type: ignore[override]
        return "adaptive"  # it reads the defence's public grid

    def describe(self) -> dict:
        return {**super().describe(), "grid": "observed"}

    def refusal(self, obs) -> Optional[str]:
        return grid_refusal(obs, "quantize")

    def objective(self, obs, G, cfg, labels, model) -> GGLObjective:
        return on_observed_grid(super().objective(obs, G, cfg, labels, model), obs, decoded=True)
