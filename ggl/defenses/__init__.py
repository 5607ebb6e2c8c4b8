"""Client-side defenses: one object in one file each, found through one registry.

The shipped modules (``SHIPPED``, the one list) are imported here; each registers itself with
``@register`` (``ggl.defenses.base``). A file dropped into this folder is *not* loaded: a user's defence
is a plugin named in the config's ``plugins:`` or an entry point ``ggl.defenses`` (``ggl.core.plugins``;
docs/extending.md, "Add your own defense"). ``REGISTRY`` maps config names to defense classes; ``parse_defense``
turns a ``defenses:`` entry into its checked object.
"""
from __future__ import annotations

import importlib

from ggl.defenses.base import (EXPECTATION, FLOAT_BITS, MASK, NONE, REAPPLY, REGISTRY, AttackModel, Defense,
                               check_chain, defense_family, defenses_label, expectation, known_names,
                               label_owner, no_model, observed_mask, parse_chain, parse_defense, reapply, register,
                               to_dicts)

# the defences this package ships, one module each (base, accounting: the machinery)
SHIPPED = ("clip", "identity", "noise", "prune", "qsgd", "quantize", "sign", "soteria", "topk")
for _module in SHIPPED:
    importlib.import_module(f"{__name__}.{_module}")

from ggl.defenses.noise import resolve_noise  # noqa: E402  (the noise module registered above)

__all__ = ["AttackModel", "Defense", "EXPECTATION", "FLOAT_BITS", "MASK", "NONE", "REAPPLY", "REGISTRY", "SHIPPED",
           "check_chain", "defense_family", "defenses_label", "expectation", "known_names", "label_owner",
           "no_model", "observed_mask", "parse_chain", "parse_defense", "reapply", "register", "resolve_noise",
           "to_dicts"]
