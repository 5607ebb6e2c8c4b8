"""``model:``: the federation's classifier (which architecture, its initialisation, a starting checkpoint)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ggl.core.checks import one_of
from ggl.models import check_model_name


@dataclass
class ModelConfig:
    name: str = "cnn"
    init: str = "default"
    checkpoint: Optional[str] = None

    def check(self) -> None:
        check_model_name(self.name, "model.name")  # a builtin name, or your own model as pkg.module:Class
        one_of(self.init, ("default", "dlg"), "model.init")
