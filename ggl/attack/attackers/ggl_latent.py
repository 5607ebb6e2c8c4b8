"""GGL (Li et al., CVPR 2022) as portfolio entries: the latent search of ``ggl.attack.attack`` with the
L2 or the cosine matching loss, non-adaptive or adaptive (the attacker re-applies the observed,
public defence spec to its trial updates; randomised steps by their expectation).

    ggl-l2            ggl-l2-adaptive            ggl-cosine            ggl-cosine-adaptive

They call ``ggl.attack.attack`` with the ``attack:`` section's search budget and only ``loss`` and
``adaptive`` replaced, so they are exactly the attacker ``attack.py`` runs with those two keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ggl.attack import attack
from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker, with_keys


@register("ggl-l2", order=10, loss_kind="l2", adaptive=False)
@register("ggl-l2-adaptive", order=20, compare_with=("ggl-l2",), loss_kind="l2", adaptive=True)
@register("ggl-cosine", order=30, loss_kind="cosine", adaptive=False)
@register("ggl-cosine-adaptive", order=40, loss_kind="cosine", adaptive=True)
@dataclass
class GGLAttacker(Attacker):
    loss_kind: str = "l2"
    adaptive: bool = False
    search: ClassVar[str] = "attack.optimizer (cmaes | adam | cmaes_adam)"

    @property
    def loss(self) -> str:  # type: ignore[override]
        return self.loss_kind

    @property
    def models(self) -> str:  # type: ignore[override]
        return "adaptive" if self.adaptive else "none"

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        return attack(obs, G, with_keys(cfg, loss=self.loss_kind, adaptive=self.adaptive), seed,
                      labels=labels, tick=tick, model=model)
