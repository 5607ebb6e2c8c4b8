"""``ggl-l2-decoded`` / ``ggl-cosine-decoded`` / ``inverting-gradients-decoded``: the attacker of the
same name without ``-decoded``, run unchanged on the *decoded* observation.

A min/max grid with nearest rounding sends the cell that holds 0 as its level ``c0 = lo + k0 step``
(``k0 = round(-lo / step)``, ``|c0|`` up to half a step); at a trained model most of a one-image gradient
is exactly 0 (dead ReLUs), so ``c0`` is an offset common to most of the update that dominates L2 and
cosine matching. The server knows ``lo`` and ``step`` (``ggl.attack.grid``) and decodes that cell as 0;
other cells keep their levels. Everything else (labels, search, loss, options) is the base attacker's.
Refuses (one line) an observation with nothing to decode: float32, sign and QSGD payloads (no cell sent
off 0), stochastic rounding (decoding its zero cell as 0 would bias it), a zero cell already at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ggl.attack.attackers import register
from ggl.attack.attackers.ggl_latent import GGLAttacker
from ggl.attack.attackers.inverting_gradients import InvertingGradients
from ggl.attack.grid import decoded_observation, grid_refusal


class Decoded:
    """Mixin: refuse without a zero cell to decode; run the base attacker on the decoded observation."""

    @property
    def models(self) -> str:
        return "adaptive"  # it reads the defence's public grid

    def describe(self) -> dict:
        return {**super().describe(), "grid": "decoded"}  # type: ignore[misc]

    def refusal(self, obs) -> Optional[str]:
        return grid_refusal(obs, "decode")

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        return super().run(decoded_observation(obs), G, cfg, seed, labels=labels, tick=tick,  # type: ignore[misc]
                           model=model)


@register("ggl-l2-decoded", loss_kind="l2", adaptive=False, minmax_grids=True)
@register("ggl-cosine-decoded", loss_kind="cosine", adaptive=False, minmax_grids=True)
@dataclass
class DecodedGGL(Decoded, GGLAttacker):
    pass


@register("inverting-gradients-decoded", adaptive=False)
@dataclass
class DecodedInvertingGradients(Decoded, InvertingGradients):
    pass
