"""What every attacker of the portfolio is: a name, what it matches, how it searches, what of the
defence it models, and one call ``attacker(obs, G, cfg, seed) -> SearchResult``.

``cfg`` is the ``attack:`` section (``AttackConfig``): the search budget (optimizer, population,
generations, Adam steps...) shared by every prior-based attacker, so their scores compare at equal
budget. An attacker's own settings are its dataclass fields (``attack.attacker_options.<name>``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Optional

from torch import Tensor, nn

from ggl.attack import search_units
from ggl.core.errors import UserError


@dataclass
class Attacker:
    name: str = ""
    # declared by each attacker class (see ggl/attack/attackers/__init__.py)
    loss: ClassVar[str] = ""
    search: ClassVar[str] = ""
    models: ClassVar[str] = "none"       # none | adaptive | eot
    uses_prior: ClassVar[bool] = True

    def check(self, key: str) -> None:
        """Check the attacker's own options (raise ConfigError naming ``key``)."""

    def units(self, cfg) -> int:
        """Progress-bar units one attack takes (the latent search's by default)."""
        return search_units(cfg)

    def refusal(self, obs) -> Optional[str]:
        """Why this attacker cannot attack ``obs`` (one line), or None."""
        return None

    def describe(self) -> dict:
        """What it is, for results files: name, loss, search, what of the defence it models, prior."""
        return {"attacker": self.name, "loss": self.loss, "search": self.search, "models": self.models,
                "uses_prior": self.uses_prior}

    def __call__(self, obs, G: Optional[nn.Module], cfg, seed: int, labels: Optional[Tensor] = None,
                 tick=None, model: Optional[nn.Module] = None):
        reason = self.refusal(obs)
        if reason:
            raise UserError(f"attacker '{self.name}' refuses observation '{obs.obs_id}': {reason}")
        return self.run(obs, G, cfg, seed, labels=labels, tick=tick, model=model)

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):  # pragma: no cover - abstract
        raise NotImplementedError


def with_keys(cfg, **keys):
    """A copy of the ``attack:`` config with ``keys`` replaced (a dataclass, a DictConfig or a namespace)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.replace(cfg, **keys)
    out = copy.deepcopy(cfg)
    for k, v in keys.items():
        setattr(out, k, v)
    return out
