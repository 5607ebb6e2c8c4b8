"""``{name: identity}``: passes updates through unchanged; a control for tests and ablations."""
from __future__ import annotations

from ggl.defenses.base import Defense, reapply, register


@register
class Identity(Defense):
    name: str = "identity"

    norm_preserving = True

    def transform(self, tensors, update):
        return list(tensors), None

    def attack_model(self):
        return reapply(None)  # nothing to model
