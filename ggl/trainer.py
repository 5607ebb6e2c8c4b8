"""The Lightning Trainer every job uses; any Trainer argument is reachable as ``trainer.<arg>``."""
from __future__ import annotations

import difflib
import logging
import inspect
import warnings
from typing import Any, Dict

import lightning as L

from ggl.checkpointing import AtomicCheckpointIO
from ggl.errors import ConfigError

# Owned by other config keys: setting them under trainer. would silently disagree with those.
_OWNED = {"max_epochs": "fl.rounds (or gan.epochs)", "max_steps": "fl.rounds (or gan.epochs)",
          "logger": "logger.mode", "default_root_dir": "output_dir"}


def _quiet_lightning() -> None:
    # Lightning's start-up INFO lines (GPU/TPU availability, product tips) drown the progress bar
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*`training_step` returned `None`.*",
                    ".*GPU available but not used.*", ".*LeafSpec.*", ".*Checkpoint directory.*exists.*",
                    ".*The number of training batches.*", ".*isinstance.*LeafSpec.*"):
        warnings.filterwarnings("ignore", pattern)


def build_trainer(user_args: Dict[str, Any], defaults: Dict[str, Any]) -> L.Trainer:
    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in user_args:
        if key in _OWNED:
            raise ConfigError(f"config key 'trainer.{key}' is set by '{_OWNED[key]}'; set that instead")
        if key not in valid:
            near = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            hint = f"did you mean 'trainer.{near[0]}'?" if near else "see lightning.Trainer's arguments"
            raise ConfigError(f"unknown config key 'trainer.{key}' (not a Lightning Trainer argument); {hint}")
    args = {"accelerator": "auto", "devices": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
            "enable_model_summary": False, "plugins": [AtomicCheckpointIO()], **defaults, **user_args}
    _quiet_lightning()
    try:
        return L.Trainer(**args)
    except (ValueError, TypeError) as exc:  # MisconfigurationException is a ValueError
        raise ConfigError(f"config section 'trainer': {str(exc).splitlines()[0]}") from None
