"""Config specs of the defences: one dataclass per defence, keyed by ``name`` in the config list.

``defenses:`` in a config is a list, applied to every client update in the order written, e.g.::

    defenses:
      - {name: quantize, bits: 4, rounding: nearest, range: global}

New defences register a spec here and a callback in ``ggl.fl.callbacks``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, Dict, Type

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


DEFENSE_SPECS: Dict[str, Type] = {"quantize": QuantizeSpec, "identity": IdentitySpec}


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
