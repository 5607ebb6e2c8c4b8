"""The Lightning Trainer every job uses; any Trainer argument is reachable as ``trainer.<arg>``.

Also what every job shares around it: the CPU thread count (``torch_threads``) and Ctrl-C, which
Lightning turns into ``sys.exit(1)``; ``build_trainer``'s Trainer raises ``RunInterrupted`` instead,
carrying the run folder so the command line can say how to resume.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import signal
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback

from ggl.runs.checkpointing import AtomicCheckpointIO
from ggl.core.errors import ConfigError

# Owned by other config keys: setting them under trainer. would silently disagree with those.
_OWNED = {"max_epochs": "fl.rounds (or gan.epochs)", "max_steps": "fl.rounds (or gan.epochs)",
          "logger": "logger.mode", "default_root_dir": "output_dir"}
_DEFAULTS = {"accelerator": "auto", "devices": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
             "enable_model_summary": False}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``trainer.fit``: Lightning has shut down cleanly (checkpoints on disk are whole)."""

    def __init__(self, run_dir: Optional[Path]):
        super().__init__(f"interrupted (run folder {run_dir})")
        self.run_dir = run_dir


class _WatchInterrupt(Callback):
    def __init__(self):
        self.seen = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.seen = self.seen or isinstance(exception, KeyboardInterrupt)


class Trainer(L.Trainer):
    """``L.Trainer`` whose ``fit`` raises ``RunInterrupted`` on Ctrl-C instead of exiting the process.

    Lightning catches KeyboardInterrupt, shuts down gracefully, ignores SIGINT from then on and calls
    ``sys.exit(1)``; a caller (the CLI, a sweep, a notebook) could then neither tell an interrupt from
    a failure nor be interrupted again.
    """

    def __init__(self, *args, run_dir: Optional[Path] = None, **kwargs):
        self._watch = _WatchInterrupt()
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [self._watch]
        super().__init__(*args, **kwargs)
        self.run_dir = Path(run_dir) if run_dir else None

    def fit(self, *args, **kwargs):
        handler = signal.getsignal(signal.SIGINT)
        try:
            return super().fit(*args, **kwargs)
        except SystemExit:
            if self._watch.seen:
                raise RunInterrupted(self.run_dir) from None
            raise
        finally:
            if handler is not None:  # Lightning set SIGINT to "ignore" while shutting down
                signal.signal(signal.SIGINT, handler)


def _quiet_lightning() -> None:
    # Lightning's start-up INFO lines (GPU/TPU availability, product tips) drown the progress bar
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*`training_step` returned `None`.*",
                    ".*GPU available but not used.*", ".*LeafSpec.*", ".*Checkpoint directory.*exists.*",
                    ".*The number of training batches.*", ".*isinstance.*LeafSpec.*",
                    ".*The dirpath has changed from.*"):  # a moved run folder: ggl's resume says so in one line
        warnings.filterwarnings("ignore", pattern)


def check_trainer_args(user_args: Dict[str, Any]) -> None:
    """Config-time check of ``trainer:``: known keys, and values Lightning accepts (built once, unused),
    so a bad value fails before any run folder exists."""
    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in user_args:
        if key in _OWNED:
            raise ConfigError(f"config key 'trainer.{key}' is set by '{_OWNED[key]}'; set that instead")
        if key not in valid:
            near = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.6)
            hint = f"did you mean 'trainer.{near[0]}'?" if near else "see lightning.Trainer's arguments"
            raise ConfigError(f"unknown config key 'trainer.{key}' (not a Lightning Trainer argument); {hint}")
    for key in ("devices", "num_nodes"):
        value = user_args.get(key)
        if isinstance(value, bool) or (isinstance(value, int) and value < 1 and not (key == "devices" and value == -1)):
            fix = "1 or more (or -1 / 'auto' for all)" if key == "devices" else "1 or more"
            raise ConfigError(f"config key 'trainer.{key}' = {value!r} must be {fix}")
    _quiet_lightning()
    try:
        L.Trainer(**{**_DEFAULTS, **user_args, "logger": False, "enable_checkpointing": False,
                     "enable_progress_bar": False, "callbacks": []})
    except Exception as exc:  # MisconfigurationException (a ValueError), TypeError, RuntimeError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        given = ", ".join(f"trainer.{k}={v!r}" for k, v in user_args.items())
        raise ConfigError(f"config section 'trainer' ({given}): {first}") from None


def build_trainer(user_args: Dict[str, Any], defaults: Dict[str, Any]) -> Trainer:
    check_trainer_args(user_args)
    args = {**_DEFAULTS, "plugins": [AtomicCheckpointIO()], **defaults, **user_args}
    _quiet_lightning()
    try:
        return Trainer(run_dir=defaults.get("default_root_dir"), **args)
    except (ValueError, TypeError) as exc:  # MisconfigurationException is a ValueError
        raise ConfigError(f"config section 'trainer': {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------
# CPU threads (the OpenMP wait policy is set in ggl/__init__.py: it must precede ``import torch``)


def apply_torch_threads(n: Optional[int]) -> None:
    """``torch_threads``: torch's intra-op CPU threads for this job; None keeps torch's default."""
    if n:
        import torch

        torch.set_num_threads(int(n))
