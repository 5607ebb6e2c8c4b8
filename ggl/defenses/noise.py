"""Gaussian noise on a client update (``{name: noise}``): with a clip before it, DP-FedAvg.

The privacy budget of a run is computed with Opacus' RDP accountant (``ggl.defenses.accounting``).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ggl.core.errors import ConfigError
from ggl.core.seeding import STREAM_DEFENSE, generator
from ggl.defenses.accounting import dp_epsilon
from ggl.defenses.base import Defense, FLOAT_BITS, expectation, register

# Gaussian noise draws from (seed, round, client, STREAM_DEFENSE, NOISE_SUBSTREAM): never the stream
# stochastic rounding uses (update.rng(STREAM_DEFENSE)), so a chain with both has independent draws
NOISE_SUBSTREAM = 1


def add_gaussian_noise(tensors: Sequence[Tensor], std: float,
                       generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """Add i.i.d. N(0, std**2) to every coordinate; the draws come from ``generator`` tensor by tensor."""
    out = []
    for t in tensors:
        noise = torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        out.append(t + std * noise)
    return out


def resolve_noise(specs: Sequence, index: int, key: str = "defenses") -> Tuple[float, Optional[float]]:
    """(std, DP noise multiplier or None) of the noise defence ``specs[index]`` within its chain.

    std: ``spec.std``, or ``noise_multiplier * max_norm`` of the nearest clip before it. The DP noise
    multiplier (std / clip bound) is given only when the update the noise lands on is bounded by that
    clip: a clip precedes it and every defence in between keeps norms (``norm_preserving``).
    Otherwise (no clip; quantize or error feedback in between) there is no sensitivity bound and so
    no DP guarantee: None.
    """
    spec = specs[index]
    bound, bounded = None, True
    for j in range(index - 1, -1, -1):
        if specs[j].sensitivity_bound is not None:
            bound = specs[j].sensitivity_bound
            break
        bounded = bounded and specs[j].norm_preserving
    if spec.noise_multiplier is not None:
        if bound is None:
            raise ConfigError(f"config key '{key}[{index}].noise_multiplier' is relative to a clip bound, but no "
                              f"'clip' comes before it in '{key}'; add one or set '{key}[{index}].std'")
        std = spec.noise_multiplier * bound
    else:
        std = float(spec.std)
    multiplier = std / bound if (bound is not None and bounded) else None
    return std, multiplier


@register
class Noise(Defense):
    """Add N(0, std**2) to every coordinate, drawn from (seed, round, client). Set exactly one of ``std``
    (absolute) and ``noise_multiplier`` (std = noise_multiplier * max_norm of the nearest clip before it
    in the chain). ``delta`` is the delta of the (epsilon, delta) the run reports. The update leaves as
    dense float32. When a clip bounds the update (``resolve_noise``) this is client-level DP-FedAvg:
    ``privacy/epsilon`` is logged after every round and returned by ``summary``. The adaptive attacker
    applies its expectation (nothing: the noise is zero-mean and its draws unknown)."""
    name: str = "noise"
    label_pattern = r"(nm|std)[\d.]"   # nm0.1 (relative to the clip), std0.01 (absolute)
    std: Optional[float] = None
    noise_multiplier: Optional[float] = None
    delta: float = 1e-5

    def check(self, key: str) -> None:
        if (self.std is None) == (self.noise_multiplier is None):
            raise ConfigError(f"config key '{key}' must set exactly one of '{key}.std' (absolute) and "
                              f"'{key}.noise_multiplier' (relative to the clip bound before it)")
        for field_name in ("std", "noise_multiplier"):
            value = getattr(self, field_name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"config key '{key}.{field_name}' = {value} must be a number >= 0")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"config key '{key}.delta' = {self.delta} must be in (0, 1)")

    @property
    def label(self) -> str:
        return f"nm{self.noise_multiplier:g}" if self.noise_multiplier is not None else f"std{self.std:g}"

    # (std, DP multiplier or None) in its chain; set by bind(), and for a noise on its own
    @property
    def resolved(self) -> Tuple[float, Optional[float]]:
        return getattr(self, "_resolved", None) or resolve_noise([self], 0)

    def bind(self, chain, index, key):
        bound = copy.copy(self)
        bound._resolved = resolve_noise(list(chain), index, key)
        return bound

    def transform(self, tensors, update):
        std = self.resolved[0]
        if std == 0:
            return list(tensors), None
        device = tensors[0].device if tensors else "cpu"
        gen = generator(update.seed, update.round, update.client_id, STREAM_DEFENSE, NOISE_SUBSTREAM, device=device)
        return add_gaussian_noise(tensors, std, gen), FLOAT_BITS * sum(t.numel() for t in tensors)

    def attack_model(self):
        return expectation()

    def setup(self, model, key):
        if self.resolved[1] is None:
            return (f"defence '{self.label}': no clip bounds the update it perturbs, so the run has no DP "
                    f"guarantee and no privacy/epsilon is reported (put 'clip' right before 'noise')")
        return None

    def epsilon(self, rounds: int, sample_rate: float) -> Optional[float]:
        """Client-level epsilon after ``rounds`` rounds; None when the chain gives no DP guarantee."""
        multiplier = self.resolved[1]
        if multiplier is None:
            return None
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": only at huge epsilon
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return dp_epsilon(multiplier, sample_rate, rounds, self.delta)

    def round_metrics(self, rounds, sample_rate):
        eps = self.epsilon(rounds, sample_rate)
        return {} if eps is None else {"privacy/epsilon": eps if math.isfinite(eps) else float("inf")}

    def summary(self, rounds, sample_rate):
        """What results.json says about privacy: epsilon None = no DP guarantee (or no round run)."""
        std, multiplier = self.resolved
        eps = self.epsilon(rounds, sample_rate) if sample_rate is not None else None
        return {"epsilon": eps if eps is None or math.isfinite(eps) else None, "delta": self.delta,
                "noise_multiplier": multiplier, "std": std, "sample_rate": sample_rate,
                "rounds": rounds, "accountant": "opacus.rdp (Poisson sampling, client level)"}
