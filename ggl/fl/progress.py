"""A progress bar over FL rounds (Lightning's default shows one bar per one-step epoch)."""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


class RoundProgressBar(ProgressBar):
    def __init__(self, desc: str = "FL rounds"):
        super().__init__()
        self.desc = desc
        self._enabled = True
        self._bar = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._bar = tqdm(total=trainer.max_epochs, initial=trainer.current_epoch, desc=self.desc, unit="round",
                         disable=not (self._enabled and trainer.is_global_zero), dynamic_ncols=True,
                         file=sys.stderr)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._bar is None:
            return
        metrics = trainer.callback_metrics
        post = {k.split("/")[-1]: f"{float(metrics[k]):.4f}" for k in ("test/acc", "test/loss") if k in metrics}
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
