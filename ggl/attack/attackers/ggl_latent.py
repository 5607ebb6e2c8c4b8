"""GGL (Li et al., CVPR 2022) as portfolio entries: the latent search of ``ggl.attack.attack`` with the
L2 or the cosine matching loss, non-adaptive or adaptive (the attacker re-applies the observed,
public defence spec to its trial updates; randomised steps by their expectation).

    ggl-l2            ggl-l2-adaptive            ggl-cosine            ggl-cosine-adaptive

They call ``ggl.attack.attack`` with the ``attack:`` section's search budget and only ``loss`` and
``adaptive`` replaced, so they are exactly the attacker ``attack.py`` runs with those two keys.

Option ``minmax_grids`` (adaptive only; default true): ``false`` refuses a payload of the min/max
quantizer, where re-quantizing each trial on its own min/max compares it on another grid than the
payload's at trained rounds (issue 26; ``ggl-l2-observed-grid`` and ``ggl-cell`` read the payload's grid),
so that a sweep runs the adaptive model only where it is exact: clipping (a public bound), sign (the
trial's own per-tensor scale, which the payload's scale is compared with), top-k, pruning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ggl.attack import attack
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker, with_keys
from ggl.attack.grid import defence_steps
from ggl.core.errors import ConfigError
from ggl.defenses.quantize import Quantize


# a non-adaptive entry models no grid: minmax_grids is fixed there, so it takes no options
@register("ggl-l2", order=10, loss_kind="l2", adaptive=False, minmax_grids=True)
@register("ggl-l2-adaptive", order=20, compare_with=("ggl-l2",), loss_kind="l2", adaptive=True)
@register("ggl-cosine", order=30, loss_kind="cosine", adaptive=False, minmax_grids=True)
@register("ggl-cosine-adaptive", order=40, loss_kind="cosine", adaptive=True)
@dataclass
class GGLAttacker(Attacker):
    loss_kind: str = "l2"
    adaptive: bool = False
    minmax_grids: bool = True   # false: refuse min/max-quantized payloads (an adaptive entry's option)
    search: ClassVar[str] = "attack.optimizer (cmaes | adam | cmaes_adam)"

    def check(self, key: str) -> None:
        if not isinstance(self.minmax_grids, bool):
            raise ConfigError(f"config key '{key}.minmax_grids' = {self.minmax_grids!r} must be true or false")

    def refusal(self, obs):
        if self.minmax_grids:
            return None
        for step in defence_steps(obs.defenses):  # a 32-bit quantizer is fp32, left out there
            if isinstance(step, Quantize):
                return (f"'{step.label}' is a min/max quantizer and minmax_grids is false: a trial re-quantized on "
                        f"its own min/max is compared on another grid than the payload's; ggl-l2-observed-grid and "
                        f"ggl-cell read the payload's grid")
        return None

    @property
    def loss(self) -> str:  # type: ignore[override]
        return self.loss_kind

    @property
    def models(self) -> str:  # type: ignore[override]
        return "adaptive" if self.adaptive else "none"

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        return attack(obs, G, with_keys(cfg, loss=self.loss_kind, adaptive=self.adaptive), seed,
                      labels=labels, tick=tick, model=model)
