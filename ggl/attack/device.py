"""Where the attack's tensors live: ``attack.device`` = auto | cpu | cuda (auto = cuda when available)."""
from __future__ import annotations

import torch

from ggl.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> None:
    """``cuda`` asked for on a machine without a GPU is a user error, found before any work."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'attack.device' = cuda but torch sees no CUDA GPU here; "
                          "use attack.device=auto (cuda when available) or attack.device=cpu")


def attack_device(name: str = "auto") -> torch.device:
    """The torch device of ``attack.device``."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
