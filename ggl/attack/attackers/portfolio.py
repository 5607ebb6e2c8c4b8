"""Run a portfolio of attackers on one observation: every attacker, the same observation, the same
seed (so their scores pair up per victim); an attacker that refuses the observation (``ggl-eot`` on a
deterministic defence) is skipped with its one-line reason instead of failing the run."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

from torch import Tensor, nn

from ggl.attack.attackers.base import Attacker


def run_portfolio(attackers: Sequence[Attacker], obs, G: Optional[nn.Module], cfg, seed: int,
                  labels: Optional[Tensor] = None, tick=None,
                  model: Optional[nn.Module] = None) -> Dict[str, Union[object, str]]:
    """{attacker name: its ``SearchResult``, or the reason (str) it refused ``obs``}, in portfolio order."""
    model = model if model is not None else obs.build_model()
    out: Dict[str, Union[object, str]] = {}
    for attacker in attackers:
        reason = attacker.refusal(obs)
        if reason:
            out[attacker.name] = reason
            continue
        out[attacker.name] = attacker.run(obs, G, cfg, seed, labels=labels, tick=tick, model=model)
    return out


def portfolio_units(attackers: Sequence[Attacker], cfg) -> int:
    """Progress-bar units of one observation through the whole portfolio (refusals counted too)."""
    return sum(a.units(cfg) for a in attackers)
