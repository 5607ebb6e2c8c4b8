"""Models by name: ``build_model(name, channels, num_classes, init)``."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn

from ggl.models.classifiers import LeNetDLG, SmallCNN, dlg_init_, resnet18_32

_CLASSIFIERS: Dict[str, Callable[[int, int], nn.Module]] = {
    "cnn": lambda c, k: SmallCNN(c, k),
    "lenet": lambda c, k: LeNetDLG(c, k),
    "resnet18": lambda c, k: resnet18_32(c, k),
}


def available_models() -> List[str]:
    return list(_CLASSIFIERS)


def build_model(name: str, channels: int, num_classes: int, init: str = "default",
                seed: int | None = None) -> nn.Module:
    """Build a classifier; with ``seed`` its initial weights depend on nothing else."""
    if name not in _CLASSIFIERS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(_CLASSIFIERS)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _CLASSIFIERS[name](channels, num_classes)
        if init == "dlg":
            dlg_init_(model)
    return model
