"""Add your own defense: one class in one file (docs/extending.md, "Add your own defense").

Name it as a plugin (a file in ``ggl/defenses/`` is not loaded): ``plugins: [my_defense]`` in the config
with this folder on PYTHONPATH, or an entry point ``ggl.defenses`` of an installed package, e.g.
``PYTHONPATH=examples python train.py --config fed_q4.yaml plugins=[my_defense] "defenses=[{name: threshold}]"``;
then ``defenses: [{name: threshold, tau: 0.1}]`` works in any fed_*.yaml, sweep or attack.
"""
import torch

from ggl.defenses import Defense, reapply, register
from ggl.defenses.topk import index_bits
from ggl.core.errors import ConfigError


def threshold(tensors, tau):
    """Zero every entry smaller than tau x the largest |entry| of its tensor (pure: tensors -> tensors)."""
    return [torch.where(t.abs() >= tau * t.abs().max(), t, torch.zeros_like(t)) for t in tensors]


@register                 # makes it a dataclass known to configs by `name`
class Threshold(Defense):
    name: str = "threshold"   # the config name
    tau: float = 0.1          # its config keys, with defaults

    norm_preserving = True    # it only zeroes entries: a clip before it still bounds the update

    def check(self, key):     # bad input names the key
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"config key '{key}.tau' = {self.tau} must be in [0, 1]")

    @property
    def label(self):          # run names, W&B groups, report rows
        return f"thr{self.tau:g}"

    def transform(self, tensors, update):  # -> (sent tensors, bits sent)
        out = threshold(tensors, self.tau)
        bits = sum(int((t != 0).sum()) * (32 + index_bits(t.numel())) for t in out)  # values + indices
        return out, bits

    def attack_model(self):   # the adaptive attacker re-applies it (differentiable where it keeps entries)
        return reapply(lambda tensors: threshold(tensors, self.tau))
