"""The attack's W&B run, opened before its searches and fed while they run.

One run per defence setting (offline by default). It opens before the setting's first search and
streams, per search step (CMA-ES generation or Adam step): the best loss so far of the image being
attacked, the overall progress of the setting, and every ``attack.image_every`` steps the best
reconstruction so far as a ``wandb.Image`` (one generator pass: cheap). Its config carries the
attacked setting's real defence chain (from the observations), not the attack config's top-level one.
At the end it gets the grid of all reconstructions and the summary.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, List, Optional

from ggl.attack.search import SearchStep


class LiveAttackRun:
    """A W&B run for one defence setting; ``None``-safe: with ``logger.mode=disabled`` it does nothing."""

    def __init__(self, cfg, run_dir: Path, name: str, group: str, label: str, config: dict, chain: list,
                 n_images: int, units: int):
        self.run = None
        self.units, self.n_images = max(1, units), max(1, n_images)
        self.image_every = int(cfg.attack.image_every)
        if cfg.logger.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group or group,
                              name=f"{name}-{label}", job_type="attack", dir=str(run_dir), mode=cfg.logger.mode,
                              tags=sorted({"attack", label, cfg.attack.optimizer} | set(cfg.logger.tags)),
                              config={**config, "setting": label, "defenses": list(chain)})
        self.run.define_metric("attack/*", step_metric="attack/step")

    def watcher(self, image: int, obs_id: str) -> Optional[Callable[[SearchStep], None]]:
        """What the search of image number ``image`` calls after each step."""
        if self.run is None:
            return None
        import wandb

        def watch(s: SearchStep) -> None:
            step = image * self.units + s.step
            row = {"attack/step": step, "attack/image": image, "attack/phase_adam": int(s.phase == "adam"),
                   "attack/progress": step / (self.n_images * self.units)}
            if math.isfinite(s.loss):
                row["attack/best_loss"] = s.loss
                row["attack/log10_best_loss"] = math.log10(max(s.loss, 1e-300))
            if self.image_every and (s.step % self.image_every == 0 or s.step == s.total):
                x = s.images()
                if x is not None:
                    from torchvision.utils import make_grid

                    row["attack/best_reconstruction"] = wandb.Image(
                        make_grid(x.clamp(0, 1), nrow=len(x)), caption=f"{obs_id}: best so far, step {s.step}")
            self.run.log(row)
        return watch

    def finish(self, summary: dict, grid: Path, label: str) -> None:
        if self.run is None:
            return
        import wandb

        try:
            self.run.log({"reconstructions": wandb.Image(str(grid), caption=f"{label}: originals over reconstructions"),
                          "attack/step": self.n_images * self.units})
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})
        finally:
            self.run.finish()

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
