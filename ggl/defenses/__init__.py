"""Client-side defenses: one object in one file each, found through one registry.

Every module of this package is imported here, and each defense registers itself with ``@register``
(``ggl.defenses.base``), so adding a defense is adding one file (see the README, "Add your own
defense"). ``REGISTRY`` maps config names to defense classes; ``parse_defense`` turns a ``defenses:``
entry into its checked object.
"""
from __future__ import annotations

import importlib
import pkgutil

from ggl.defenses.base import (EXPECTATION, FLOAT_BITS, MASK, NONE, REAPPLY, REGISTRY, AttackModel, Defense,
                               check_chain, defense_family, defenses_label, expectation, known_names,
                               label_owner, no_model, observed_mask, parse_defense, reapply, register, to_dicts)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from ggl.defenses.noise import resolve_noise  # noqa: E402  (the noise module registered above)

__all__ = ["AttackModel", "Defense", "EXPECTATION", "FLOAT_BITS", "MASK", "NONE", "REAPPLY", "REGISTRY",
           "check_chain", "defense_family", "defenses_label", "expectation", "known_names", "label_owner",
           "no_model", "observed_mask", "parse_defense", "reapply", "register", "resolve_noise", "to_dicts"]
