"""Checkpoint I/O of every Trainer: atomic saves (``ggl.core.atomic``), safe loads (``ggl.core.safe_load``).

A resume checkpoint may come from someone else, so Lightning's own load goes through the safe loader:
tensors and plain values only, whatever ``weights_only`` Lightning or the environment asks for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from ggl.core.atomic import atomic_write_with
from ggl.core.safe_load import safe_load


class AtomicCheckpointIO(TorchCheckpointIO):
    """``saved()`` runs once each checkpoint is whole on disk (a fresh run becomes ``latest`` then)."""

    def __init__(self, saved: Optional[Callable[[], None]] = None):
        super().__init__()
        self.saved = saved

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write_with(path, lambda fh: torch.save(checkpoint, fh))
        if self.saved is not None:
            self.saved()

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return safe_load(path, "checkpoint", map_location=map_location)


def run_checkpoints(run_dir: Path, filename: str, every: int) -> ModelCheckpoint:
    """``<run>/checkpoints/``: the newest numbered file and ``last.ckpt``, always under those names.

    No version counter: in a moved or copied run folder Lightning does not recognise its own ``last.ckpt``
    (the recorded folder differs) and would write ``last-v1.ckpt`` beside a stale ``last.ckpt``; ggl owns
    this folder, so it overwrites (atomically). ``save_top_k=1`` without a monitor keeps the newest numbered
    file: Lightning (2.6) refreshes ``last.ckpt`` only when such a file is saved.
    """
    return ModelCheckpoint(dirpath=Path(run_dir) / "checkpoints", filename=filename, save_last=True, save_top_k=1,
                           every_n_epochs=every, auto_insert_metric_name=False, enable_version_counter=False)
