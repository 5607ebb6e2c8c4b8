"""Config specs of the defences: one dataclass per defence, keyed by ``name`` in the config list.

``defenses:`` in a config is a list, applied to every client update in the order written, e.g.
DP-FedAvg followed by 8-bit quantization::

    defenses:
      - {name: clip, max_norm: 1.0}
      - {name: noise, noise_multiplier: 1.0, delta: 1.0e-5}   # std = noise_multiplier * clip bound
      - {name: quantize, bits: 8, rounding: nearest, range: global}

The other entries: ``{name: topk, fraction: 0.1, error_feedback: true}``, ``{name: sign}``,
``{name: noise, std: 0.01}``, ``{name: identity}``.

New defences register a spec here and a callback in ``ggl.fl.callbacks``.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple, Type

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ggl.errors import ConfigError


@dataclass
class QuantizeSpec:
    name: str = "quantize"
    bits: int = 4
    rounding: str = "nearest"
    range: str = "global"

    def check(self, key: str) -> None:
        if not (1 <= self.bits <= 16 or self.bits == 32):
            raise ConfigError(f"config key '{key}.bits' = {self.bits} must be in 1..16, or 32 for off")
        if self.rounding not in ("nearest", "stochastic"):
            raise ConfigError(f"config key '{key}.rounding' = {self.rounding!r} is not one of nearest, stochastic")
        if self.range not in ("global", "per_tensor"):
            raise ConfigError(f"config key '{key}.range' = {self.range!r} is not one of global, per_tensor")

    @property
    def label(self) -> str:
        if self.bits == 32:
            return "fp32"
        suffix = "" if (self.rounding, self.range) == ("nearest", "global") else f"-{self.rounding}-{self.range}"
        return f"q{self.bits}{suffix}"


@dataclass
class IdentitySpec:
    """Passes updates through unchanged; a control for tests and ablations."""
    name: str = "identity"

    def check(self, key: str) -> None:
        pass

    @property
    def label(self) -> str:
        return "identity"


@dataclass
class ClipSpec:
    """Scale the whole update to global L2 norm <= ``max_norm`` (``ggl.defenses.clip``)."""
    name: str = "clip"
    max_norm: float = 1.0

    def check(self, key: str) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ConfigError(f"config key '{key}.max_norm' = {self.max_norm} must be a positive number")

    @property
    def label(self) -> str:
        return f"clip{self.max_norm:g}"


@dataclass
class NoiseSpec:
    """Add N(0, std**2) to every coordinate (``ggl.defenses.noise``). Set exactly one of ``std``
    (absolute) and ``noise_multiplier`` (std = noise_multiplier * max_norm of the nearest clip before
    it in the chain). ``delta`` is the delta of the (epsilon, delta) the run reports."""
    name: str = "noise"
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


@dataclass
class TopKSpec:
    """Keep the ``fraction`` largest-magnitude coordinates of the update (``ggl.defenses.topk``);
    ``error_feedback``: each client keeps what it did not send and adds it to its next update."""
    name: str = "topk"
    fraction: float = 0.1
    error_feedback: bool = False

    def check(self, key: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"config key '{key}.fraction' = {self.fraction} must be in (0, 1]")

    @property
    def label(self) -> str:
        return f"top{self.fraction:g}" + ("-ef" if self.error_feedback else "")


@dataclass
class SignSpec:
    """1 bit per coordinate plus one float32 scale (mean |x|) per tensor (``ggl.defenses.sign``)."""
    name: str = "sign"

    def check(self, key: str) -> None:
        pass

    @property
    def label(self) -> str:
        return "sign"


DEFENSE_SPECS: Dict[str, Type] = {"quantize": QuantizeSpec, "identity": IdentitySpec, "clip": ClipSpec,
                                  "noise": NoiseSpec, "topk": TopKSpec, "sign": SignSpec}


def _norm_preserving(spec) -> bool:
    """Defences that never increase an update's L2 norm, so a clip before them still bounds it."""
    return isinstance(spec, (IdentitySpec, ClipSpec, SignSpec)) or (
        isinstance(spec, TopKSpec) and not spec.error_feedback)


def resolve_noise(specs: Sequence, index: int, key: str = "defenses") -> Tuple[float, Optional[float]]:
    """(std, DP noise multiplier or None) of the noise defence ``specs[index]`` within its chain.

    std: ``spec.std``, or ``noise_multiplier * max_norm`` of the nearest clip before it. The DP noise
    multiplier (std / clip bound) is given only when the update the noise lands on is bounded by that
    clip: a clip precedes it and every defence in between keeps norms (identity, clip, sign, top-k
    without error feedback). Otherwise (no clip; quantize or error feedback in between) there is no
    sensitivity bound and so no DP guarantee: None.
    """
    spec = specs[index]
    clip, bounded = None, True
    for j in range(index - 1, -1, -1):
        if isinstance(specs[j], ClipSpec):
            clip = specs[j]
            break
        bounded = bounded and _norm_preserving(specs[j])
    if spec.noise_multiplier is not None:
        if clip is None:
            raise ConfigError(f"config key '{key}[{index}].noise_multiplier' is relative to a clip bound, but no "
                              f"'clip' comes before it in '{key}'; add one or set '{key}[{index}].std'")
        std = spec.noise_multiplier * clip.max_norm
    else:
        std = float(spec.std)
    multiplier = std / clip.max_norm if (clip is not None and bounded) else None
    return std, multiplier


def check_chain(specs: Sequence, key: str = "defenses") -> None:
    """Checks that need the whole chain (each entry's own keys are checked by ``parse_defense``)."""
    for i, spec in enumerate(specs):
        if isinstance(spec, NoiseSpec):
            resolve_noise(specs, i, key)


def parse_defense(entry: Any, key: str):
    """Turn one ``defenses:`` entry (a mapping with ``name``) into its checked spec dataclass."""
    if isinstance(entry, tuple(DEFENSE_SPECS.values())):
        entry.check(key)
        return entry
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"config key '{key}' must be a mapping with a 'name' "
                          f"(one of {', '.join(DEFENSE_SPECS)})")
    name = entry["name"]
    if name not in DEFENSE_SPECS:
        near = difflib.get_close_matches(str(name), list(DEFENSE_SPECS), n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(DEFENSE_SPECS)}"
        raise ConfigError(f"config key '{key}.name' = {name!r} is not a known defence; {hint}")
    spec_cls = DEFENSE_SPECS[name]
    valid = [f.name for f in fields(spec_cls)]
    for k in entry:
        if k not in valid:
            near = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{key}.{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{key}.{k}' for defence '{name}'; {hint}")
    try:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(spec_cls), entry))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config key '{key}.{getattr(exc, 'full_key', '?')}': {str(exc).splitlines()[0]}") from None
    spec.check(key)
    return spec


def defenses_label(specs) -> str:
    """A short name for a defence chain, used for run names and W&B groups ('fp32' when empty)."""
    labels = [s.label for s in specs if s.label not in ("fp32", "identity")]
    return "+".join(labels) if labels else "fp32"
