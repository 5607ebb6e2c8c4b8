"""Defences as Lightning callbacks: each transforms every client update before it leaves the client.

A defence implements one extra hook, ``on_client_update(trainer, module, update) -> update``; the
FedAvg module calls it on every callback that has it, in the order the config lists them. The math
lives in ``ggl.defenses`` as pure functions, so the adaptive attacker applies the very same one.
"""
from __future__ import annotations

from typing import List

from lightning.pytorch.callbacks import Callback

from ggl.defenses.quantize import quantize_update
from ggl.defenses.specs import IdentitySpec, QuantizeSpec
from ggl.fl.update import ClientUpdate
from ggl.seeding import STREAM_DEFENSE


class UpdateTransform(Callback):
    """Base class of the defences. Subclasses override ``on_client_update``."""

    def __init__(self, spec=None):
        self.spec = spec

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        return update

    @property
    def state_key(self) -> str:  # two defences of one class in a chain keep separate state
        return f"{type(self).__qualname__}[{self.spec!r}]"


class IdentityUpdates(UpdateTransform):
    """Changes nothing: a control that must leave a run bit-for-bit unchanged."""


class QuantizeUpdates(UpdateTransform):
    """Quantize every update to ``spec.bits`` bits (see ``ggl.defenses.quantize.quantize_update``)."""

    def on_client_update(self, trainer, module, update: ClientUpdate) -> ClientUpdate:
        s: QuantizeSpec = self.spec
        if s.bits >= 32:
            return update
        gen = update.rng(STREAM_DEFENSE) if s.rounding == "stochastic" else None
        tensors, bits = quantize_update(update.tensors, s.bits, s.rounding, s.range, generator=gen)
        return update.with_tensors(tensors, bits=bits)


_CALLBACKS = {QuantizeSpec: QuantizeUpdates, IdentitySpec: IdentityUpdates}


def build_defense_callbacks(specs) -> List[UpdateTransform]:
    """One callback per ``defenses:`` entry, in the order written."""
    return [_CALLBACKS[type(s)](s) for s in specs]


def apply_defenses(callbacks, trainer, module, update: ClientUpdate) -> ClientUpdate:
    for cb in callbacks:
        if hasattr(cb, "on_client_update"):
            update = cb.on_client_update(trainer, module, update)
    return update
