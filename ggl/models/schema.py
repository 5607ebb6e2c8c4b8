"""``model:``: the federation's classifier (which architecture, its initialisation, a starting checkpoint)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ggl.core.checks import one_of
from ggl.models import available_models


@dataclass
class ModelConfig:
    name: str = "cnn"
    init: str = "default"
    checkpoint: Optional[str] = None

    def check(self) -> None:
        one_of(self.name, tuple(available_models()), "model.name")
        one_of(self.init, ("default", "dlg"), "model.init")
