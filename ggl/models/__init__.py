"""Models by name: ``build_model(name, channels, num_classes, init)``."""
from __future__ import annotations

from typing import Callable, List

import torch
from torch import nn

from ggl.core.registry import Registry
from ggl.models.classifiers import LeNetDLG, SmallCNN, dlg_init_, resnet18_32

_CLASSIFIERS: Registry[Callable[[int, int], nn.Module]] = Registry("model")
_CLASSIFIERS.add("cnn", SmallCNN)
_CLASSIFIERS.add("lenet", LeNetDLG)
_CLASSIFIERS.add("resnet18", resnet18_32)


def available_models() -> List[str]:
    return _CLASSIFIERS.names()


def build_model(name: str, channels: int, num_classes: int, init: str = "default",
                seed: int | None = None) -> nn.Module:
    """Build a classifier; with ``seed`` its initial weights depend on nothing else."""
    _CLASSIFIERS.get(name, "model.name")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = _CLASSIFIERS[name](channels, num_classes)
        if init == "dlg":
            dlg_init_(model)
    return model
