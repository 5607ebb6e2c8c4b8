"""Compatibility names: the defenses' config specs are the defense objects themselves now.

Kept so that code written against the old layout keeps working: ``parse_defense``, ``check_chain``,
``defenses_label``, ``resolve_noise``, ``DEFENSE_SPECS`` (the registry itself) and the ``<Name>Spec``
classes. New code imports from
``ggl.defenses``.
"""
from __future__ import annotations

from ggl.defenses.base import REGISTRY as DEFENSE_SPECS, check_chain, defenses_label, parse_defense  # noqa: F401
from ggl.defenses.clip import Clip as ClipSpec  # noqa: F401
from ggl.defenses.identity import Identity as IdentitySpec  # noqa: F401
from ggl.defenses.noise import Noise as NoiseSpec, resolve_noise  # noqa: F401
from ggl.defenses.quantize import Quantize as QuantizeSpec  # noqa: F401
from ggl.defenses.sign import Sign as SignSpec  # noqa: F401
from ggl.defenses.topk import TopK as TopKSpec  # noqa: F401
