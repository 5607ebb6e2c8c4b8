"""Checkpoint I/O of every Trainer: atomic saves (``ggl.core.atomic``), safe loads (``ggl.core.safe_load``).

A resume checkpoint may come from someone else, so Lightning's own load goes through the safe loader:
tensors and plain values only, whatever ``weights_only`` Lightning or the environment asks for.
"""
from __future__ import annotations

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ggl.core.atomic import atomic_write_with
from ggl.core.safe_load import safe_load


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write_with(path, lambda fh: torch.save(checkpoint, fh))

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return safe_load(path, "checkpoint", map_location=map_location)
