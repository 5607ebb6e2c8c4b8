"""``ggl-l2-decoded`` / ``ggl-cosine-decoded`` / ``inverting-gradients-decoded``: the attacker of the
same name without ``-decoded``, run unchanged on the *decoded* observation.

A min/max grid with nearest rounding has no level at 0 in general: the cell that holds 0 is sent as
its level ``c0 = lo + k0 step`` (``k0 = round(-lo / step)``, ``|c0|`` up to half a step). At a trained
model most coordinates of a one-image gradient are exactly 0 (dead ReLUs), so every one of them is sent
as ``c0``: an offset common to most of the update, which dominates L2 and cosine matching. The server
knows ``lo`` and ``step`` (the payload carries them; ``ggl.attack.grid``), so it can decode that cell as
0: every exactly-zero coordinate of the client's update is then exactly 0 in the decoded one (and every
other coordinate of that cell is within half a step of 0, as it was of ``c0``). Other cells keep their
levels. The decoded update replaces the observed one; everything else (labels, search, loss) is the
base attacker's, with its options.

Refuses (one line) an observation with nothing to decode: float32, sign and QSGD payloads (no cell sent
off 0: QSGD's level 0 is 0 already), stochastic rounding (unbiased: decoding its zero cell as 0 would
bias it), a grid whose zero cell is already at 0.
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


@register("ggl-l2-decoded", loss_kind="l2", adaptive=False)
@register("ggl-cosine-decoded", loss_kind="cosine", adaptive=False)
@dataclass
class DecodedGGL(Decoded, GGLAttacker):
    pass


@register("inverting-gradients-decoded", adaptive=False)
@dataclass
class DecodedInvertingGradients(Decoded, InvertingGradients):
    pass
