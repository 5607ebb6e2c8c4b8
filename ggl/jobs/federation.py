"""``train.py`` with ``task: fedavg``: build the data, module, defences, logger and Trainer; fit."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Dict, List

from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ggl.audit.capture import AuditCapture
from ggl.config import Config, experiment, to_container, to_yaml
from ggl.core.atomic import atomic_write_text
from ggl.core.errors import UserError
from ggl.core.plots import label_histogram_png
from ggl.data.datamodule import FederatedDataModule
from ggl.data.sources import load_dataset
from ggl.defenses import defenses_label
from ggl.fl.callbacks import build_defense_callbacks, check_defenses_fit, privacy_summary
from ggl.fl.module import FedAvgModule
from ggl.fl.progress import RoundProgressBar
from ggl.models import build_model
from ggl.models.checkpoint import check_fits, read_state
from ggl.runs.checkpointing import AtomicCheckpointIO, run_checkpoints
from ggl.runs.folder import RunFolder, open_run
from ggl.runs.artifacts import CAPTURES, captures_artifact_name, draft, log_output
from ggl.runs.logger import Stopwatch, is_rank_zero, make_logger, resolve_logger, tag, write_json
from ggl.runs.trainer import RunInterrupted, build_trainer


def run_name(cfg: Config) -> str:
    if cfg.name:
        return cfg.name
    source = getattr(cfg, "_source", None)
    return Path(source).stem if source else f"fed_{defenses_label(cfg.defenses)}"


class ResultsWriter(Callback):
    """Keeps ``results.json`` current after every evaluation, so a crash loses nothing.

    Its state (wall time so far) rides in the checkpoint, so a resumed run reports the total.
    """

    def __init__(self, run_dir: Path, config: dict):
        self.path = Path(run_dir) / "results.json"
        self.config = config
        self.clock = Stopwatch()
        self.seconds_before = 0.0

    def state_dict(self) -> dict:
        return {"wall_seconds": self.seconds_before + self.clock.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.seconds_before = float(state.get("wall_seconds", 0.0))

    def results(self, trainer, module: FedAvgModule) -> dict:
        last = module.history[-1] if module.history else {}
        stats = getattr(module, "_last_round_stats", {})
        return {
            "config": self.config,
            "final": {
                "test_acc": last.get("test_acc"),
                "test_loss": last.get("test_loss"),
                "rounds": module.rounds_completed,
                "uplink_bits_per_round": stats.get("uplink_bits"),
                "compression_ratio": stats.get("compression_ratio"),
                "rejected_updates": module.rejected_total,
                "rejected_aggregates": module.aggregates_rejected_total,
                "failed_clients": module.failed_total,
                "privacy": privacy_summary(trainer.callbacks),
            },
            "history": module.history,
            "wall_seconds": self.seconds_before + self.clock.seconds,
        }

    def _write(self, trainer, module) -> None:
        if trainer.is_global_zero:
            write_json(self.path, self.results(trainer, module))

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self._write(trainer, module)


# what a resumed federation may change besides devices and logging: how far it goes
_RESUMABLE_FL_KEYS = ("rounds", "eval_every", "eval_batch_size")


def write_partition(dm: FederatedDataModule, run_dir: Path, cfg: Config):
    """The clients' label histogram, as JSON and a heat-map PNG in the run folder."""
    hist = dm.label_histogram()
    write_json(run_dir / "label_histogram.json", {"partition": cfg.data.partition, "counts": hist.tolist()})
    detail = {"dirichlet": f" (alpha={cfg.data.alpha})", "shards": f" ({cfg.data.classes_per_client} classes/client)"}
    label_histogram_png(hist, run_dir / "label_histogram.png",
                        f"{cfg.data.name}: {cfg.data.partition}{detail.get(cfg.data.partition, '')} partition")
    return hist


class ShareRunDir(Callback):
    """Ranks other than 0 learn rank 0's run folder when the Trainer starts (Lightning's broadcast)."""

    def __init__(self, run: RunFolder, writer: "ResultsWriter"):
        self.run, self.writer = run, writer

    def setup(self, trainer, pl_module, stage) -> None:
        path = Path(trainer.strategy.broadcast(str(self.run.path), src=0))
        if not trainer.is_global_zero:
            self.run.path = path
            self.writer.path = path / "results.json"


def _rounds_done(checkpoint: dict) -> int:
    return int(checkpoint.get("ggl_rounds_completed", int(checkpoint["epoch"]) + 1))


def finished_results(run: RunFolder, rounds: int) -> dict | None:
    """A resumed run that already has ``rounds`` rounds: its results, unchanged (None = let Lightning finish:
    rounds are left, or results.json lags behind the last checkpoint)."""
    done = _rounds_done(run.checkpoint)
    if done < rounds:
        return None
    if done > rounds:
        raise UserError(f"config key 'fl.rounds' = {rounds}: the run '{run.path}' already trained {done} rounds; "
                        f"resume with fl.rounds >= {done}, or start a new run")
    try:
        results = json.loads((run.path / "results.json").read_text())
    except (OSError, ValueError):
        results = None
    if not isinstance(results, dict) or (results.get("final") or {}).get("rounds") != done:
        return None  # killed after the last checkpoint: Lightning restores it and results.json is rewritten
    if is_rank_zero():
        print(f"resume: the run '{run.path}' already finished its {done} rounds; nothing to do", file=sys.stderr)
    results["run_dir"] = str(run.path)
    return results


class StartFrom(Callback):
    """Loads the checked state into the federation's model before training, unless resuming."""

    def __init__(self, state: Dict[str, Tensor]):
        self.state = state

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not trainer.ckpt_path:  # a resumed run continues from its own weights
            pl_module.model.load_state_dict(self.state, strict=True)


def start_from(cfg) -> List[Callback]:
    """[] without ``model.checkpoint``; else the callback, after checking the file against the model."""
    if not cfg.model.checkpoint:
        return []
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download)  # cached: the run reuses it
    model = build_model(cfg.model.name, data.channels, data.num_classes)
    state = read_state(cfg.model.checkpoint)
    check_fits(model, state, cfg.model.checkpoint, cfg.model.name)
    return [StartFrom(state)]


def run_federation(cfg: Config, extra_callbacks=()) -> dict:
    """Train the configured federation; ``extra_callbacks`` join the chain after the configured defences.

    Every input is checked before the run folder is created; a set-up error removes a fresh folder and
    leaves ``latest`` where it was. Ctrl-C leaves the last checkpoint and results.json intact (both are
    written atomically) and raises ``KeyboardInterrupt`` carrying ``run_dir`` for the resume hint.
    """
    extra_callbacks = start_from(cfg) + list(extra_callbacks)  # model.checkpoint, checked before any folder
    dm = FederatedDataModule(cfg.data, cfg.fl.eval_batch_size, cfg.seed)
    dm.setup()
    check_defenses_fit(cfg.defenses, build_model(cfg.model.name, dm.data.channels, dm.data.num_classes))
    name = run_name(cfg)
    label = defenses_label(cfg.defenses)
    config = to_container(cfg)
    # Lightning's rank of this process (a Trainer reads torchrun/SLURM/launcher variables) decides who writes
    rank_zero = build_trainer(cfg.trainer, {"max_epochs": cfg.fl.rounds, "logger": False}).global_rank == 0
    tracking = resolve_logger(cfg.logger, say=rank_zero)  # before the folder: a bad W&B setting leaves none
    run = open_run(cfg.resume, cfg.output_dir, name, config, "fl", _RESUMABLE_FL_KEYS,
                   example="runs/fed_q4/latest", experiment=functools.partial(experiment, task="fedavg"),
                   rank_zero=rank_zero)
    try:
        done = finished_results(run, cfg.fl.rounds) if run.ckpt else None
        if done is not None:
            run.release()
            return done
        trainer, module, writer = _set_up(cfg, dm, run, name, label, config, extra_callbacks, tracking)
        run.commit()
    except BaseException:
        run.abandon()
        raise
    try:  # ggl.runs.trainer.Trainer turns Lightning's exit-on-Ctrl-C into RunInterrupted
        trainer.fit(module, datamodule=dm, ckpt_path=str(run.ckpt) if run.ckpt else None, weights_only=True)
    except KeyboardInterrupt:
        raise RunInterrupted(run.path) from None
    finally:
        run.release()
    run.publish()  # finished (even with no checkpoint yet, e.g. checkpoint_every > fl.rounds): results.json is whole
    _finish_wandb(trainer, run.path)
    results = writer.results(trainer, module)
    results["run_dir"] = str(run.path)
    return results


def _finish_wandb(trainer, run_dir: Path) -> None:
    """The audit captures as a W&B artifact (the attacks on them declare it their input); the run ends."""
    logger = trainer.logger if trainer.is_global_zero else None
    if logger is None or not hasattr(logger, "experiment"):
        return
    exp = logger.experiment
    log_output(exp, draft(captures_artifact_name(run_dir), CAPTURES, folder=run_dir / "audit"))
    exp.finish()


def _set_up(cfg: Config, dm: FederatedDataModule, run: RunFolder, name: str, label: str, config: dict,
            extra_callbacks, tracking):
    run_dir = run.path
    if run.rank_zero:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        hist = write_partition(dm, run_dir, cfg)

    module = FedAvgModule(cfg.model.name, dm.data.channels, dm.data.num_classes, vars(cfg.fl),
                          seed=cfg.seed, init=cfg.model.init)
    writer = ResultsWriter(run_dir, config)
    show_bar = cfg.trainer.get("enable_progress_bar", True)
    callbacks = [ShareRunDir(run, writer)] + build_defense_callbacks(cfg.defenses) + list(extra_callbacks) + [
        RoundProgressBar()] * bool(show_bar) + [
        writer, run_checkpoints(run_dir, "round{round:04.0f}", cfg.checkpoint_every),
    ]
    if cfg.audit.rounds:  # victim updates for attack.py source=<this run> (ggl/audit/capture.py)
        callbacks.append(AuditCapture(run_dir, cfg.audit, config["data"], cfg.model.name, cfg.defenses, cfg.seed))
    # one W&B group per study: this federation and the attacks on its captures (ggl.runs.artifacts.study_group)
    logger = make_logger(tracking, run_dir, name=f"{name}-s{cfg.seed}", group=name,
                         tags=["fedavg", label, tag("defense", label), cfg.data.name, cfg.model.name,
                               cfg.data.partition] + [tag("round", r) for r in cfg.audit.rounds or ()],
                         config=config, job_type="federation") if run.rank_zero else None
    if logger is not None:
        logger.log_table("data/label_histogram", columns=["client"] + [f"class_{c}" for c in range(hist.shape[1])],
                         data=[[i] + row for i, row in enumerate(hist.tolist())])
    trainer = build_trainer(cfg.trainer, {
        "max_epochs": cfg.fl.rounds, "check_val_every_n_epoch": 1, "default_root_dir": str(run_dir),
        "logger": logger if logger is not None else False, "callbacks": callbacks,
        "plugins": [AtomicCheckpointIO(saved=run.publish)],  # `latest` moves once the first checkpoint is whole
    })
    return trainer, module, writer
