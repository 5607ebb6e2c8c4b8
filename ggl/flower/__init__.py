"""ggl for Flower (``pip install "ggl[flower]"``): client mods that apply ggl's defences to what a Flower
client sends and capture it as ggl observations for ``attack.py``. See docs/flower.md.

    from ggl.flower import capture_mod, defense_mod
    defense = defense_mod([{"name": "quantize", "bits": 4}])
    capture = capture_mod("runs/my_fed/audit", clients=[0], rounds=[0, 5], data=..., defense=defense)
    app = ClientApp(mods=[capture, defense])
"""
from __future__ import annotations

FLWR_RANGE = ">=1.42,<1.43"  # the Flower releases this package is tested with (pyproject.toml's extra)

try:
    import flwr  # noqa: F401
    from flwr.app import Message  # noqa: F401  (the Message API: Flower >= 1.21)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"ggl.flower needs Flower (flwr{FLWR_RANGE}): pip install 'ggl[flower]' "
                      f"({type(exc).__name__}: {exc})") from None

from ggl.flower.mods import (CaptureMod, ClientShard, DefenseMod, capture_mod, client_id, defense_mod,  # noqa: E402
                             raise_ggl_errors, server_round)
from ggl.flower.data import GGLPartition  # noqa: E402

__all__ = ["CaptureMod", "ClientShard", "DefenseMod", "GGLPartition", "capture_mod", "client_id", "defense_mod",
           "raise_ggl_errors", "server_round", "FLWR_RANGE"]
