"""The attack's W&B run, opened before its searches and fed while they run.

One run per defence setting (offline by default). It opens before the setting's first search and
streams, per search step (CMA-ES generation or Adam step): the best loss so far of the image being
attacked, the overall progress of the setting, and every ``attack.image_every`` steps the best
reconstruction so far as a ``wandb.Image`` (one generator pass: cheap). Its config carries the
attacked setting's real defence chain (from the observations), not the attack config's top-level one.
At the end it gets the grid of all reconstructions and the summary, and logs the setting's images as
an ``attack`` artifact; its inputs (the federation's captures, the prior) are declared as used
(``ggl.runs.artifacts``). Its group is the study's: the federation's, when it attacks its captures.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Optional

from ggl.attack.search import SearchStep
from ggl.runs.artifacts import ATTACK, ATTACK_FILES, attack_artifact_name, draft, log_output, use_input


class LiveAttackRun:
    """A W&B run for one defence setting; ``None``-safe: with ``logger.mode=disabled`` it does nothing."""

    def __init__(self, cfg, tracking, run_dir: Path, name: str, group: str, label: str, config: dict, chain: list,
                 n_images: int, units: int, tags: Iterable[str] = (), inputs: Iterable[Callable] = ()):
        """``tracking``: ``ggl.runs.logger.resolve_logger``'s; ``inputs``: makers of the artifacts it uses."""
        self.run = None
        self.units, self.n_images = max(1, units), max(1, n_images)
        self.image_every = int(cfg.attack.image_every)
        if not tracking.enabled:
            return
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**tracking.init_kwargs(), group=tracking.group or group,
                              name=f"{name}-{label}", job_type="attack", dir=str(run_dir),
                              tags=sorted({"attack", label, cfg.attack.optimizer, *tags} | set(tracking.tags)),
                              config={**config, "setting": label, "defenses": list(chain)})
        self.run.define_metric("attack/*", step_metric="attack/step")
        for make in inputs:
            use_input(self.run, make())

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
            log_output(self.run, draft(attack_artifact_name(grid.parent), ATTACK,
                                       [grid.parent / f for f in ATTACK_FILES], metadata={"setting": label}))
        finally:
            self.run.finish()

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
