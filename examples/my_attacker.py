"""Add your own attacker: one class in one file (docs/extending.md, "Add your own attacker").

Name it as a plugin (a file in ``ggl/attack/attackers/`` is not loaded): ``plugins: [my_attacker]`` in the
config with this folder on PYTHONPATH, or an entry point ``ggl.attackers`` of an installed package, e.g.
``PYTHONPATH=examples python attack.py plugins=[my_attacker] "attack.attackers=[ggl-l2, prior-best-of-n]"``;
then it runs beside the others, in ``python attack.py`` and in a sweep's ``attackers:``, and the report
takes it into the worst case per victim.

This one is the cheapest attack with a prior: draw ``samples`` latents of the inferred label, keep the
one whose trial update matches the observed update best (no search at all). It sees only what the
server sees (the ``Observation``) and the public prior, never private data.
"""
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ggl.attack.attackers import register
from ggl.attack.attackers.base import Attacker
from ggl.core.errors import ConfigError


@register("prior-best-of-n")    # its name in attack.attackers / the sweep's attackers
@dataclass
class PriorBestOfN(Attacker):
    samples: int = 256          # its options: attack.attacker_options.prior-best-of-n.samples

    loss: ClassVar[str] = "l2"              # what it matches
    search: ClassVar[str] = "random"        # how it searches
    models: ClassVar[str] = "none"          # what of the defence it models: none | adaptive | eot

    def check(self, key):       # bad input names the key
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"config key '{key}.samples' = {self.samples!r} must be an integer >= 1")

    def units(self, cfg):       # progress-bar units of one observation
        return 1

    def run(self, obs, G, cfg, seed, labels=None, tick=None, model=None):
        from ggl.attack import GGLObjective, SearchResult, infer_labels

        start = time.perf_counter()
        model = model if model is not None else obs.build_model()
        labels = labels if labels is not None else infer_labels(obs, model, None)
        objective = GGLObjective(obs, G, labels, loss="l2", model=model)
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(self.samples, objective.dim, generator=gen)
        with torch.no_grad():
            losses = objective(z)
        best = int(torch.nan_to_num(losses, nan=float("inf")).argmin())
        if tick:
            tick(1)
        return SearchResult(z=z[best].view(objective.batch, -1), images=objective.images(z[best:best + 1])[0],
                            labels=objective.labels.clone(), loss=float(losses[best]),
                            evaluations=objective.evaluations, seconds=time.perf_counter() - start)
