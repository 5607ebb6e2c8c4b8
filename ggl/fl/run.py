"""``train.py`` with ``task: fedavg``: build the data, module, defences, logger and Trainer; fit."""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ggl.config import Config, to_container, to_yaml
from ggl.data.datamodule import FederatedDataModule
from ggl.defenses.specs import defenses_label
from ggl.fl.callbacks import build_defense_callbacks
from ggl.fl.module import FedAvgModule
from ggl.progress import RoundProgressBar
from ggl.tracking import Stopwatch, make_logger, new_run_dir, write_json
from ggl.trainer import build_trainer


def run_name(cfg: Config) -> str:
    if cfg.name:
        return cfg.name
    source = getattr(cfg, "_source", None)
    return Path(source).stem if source else f"fed_{defenses_label(cfg.defenses)}"


class ResultsWriter(Callback):
    """Keeps ``results.json`` current after every evaluation, so a crash loses nothing."""

    def __init__(self, run_dir: Path, config: dict, num_params: int):
        self.path = Path(run_dir) / "results.json"
        self.config = config
        self.num_params = num_params
        self.clock = Stopwatch()

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
            },
            "history": module.history,
            "wall_seconds": self.clock.seconds,
        }

    def _write(self, trainer, module) -> None:
        if trainer.is_global_zero:
            write_json(self.path, self.results(trainer, module))

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        self._write(trainer, module)


def run_federation(cfg: Config, extra_callbacks=()) -> dict:
    """Train the configured federation; ``extra_callbacks`` join the chain after the configured defences."""
    dm = FederatedDataModule(cfg.data, cfg.fl.eval_batch_size, cfg.seed)
    dm.setup()
    name = run_name(cfg)
    run_dir = new_run_dir(cfg.output_dir, name)
    label = defenses_label(cfg.defenses)
    config = to_container(cfg)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    module = FedAvgModule(cfg.model.name, dm.data.channels, dm.data.num_classes, vars(cfg.fl),
                          seed=cfg.seed, init=cfg.model.init)
    writer = ResultsWriter(run_dir, config, sum(p.numel() for p in module.parameters()))
    show_bar = cfg.trainer.get("enable_progress_bar", True)
    callbacks = build_defense_callbacks(cfg.defenses) + list(extra_callbacks) + [RoundProgressBar()] * bool(show_bar) + [
        writer,
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="round{epoch:04d}", save_last=True,
                        save_top_k=0, every_n_epochs=cfg.checkpoint_every, auto_insert_metric_name=False),
    ]
    if cfg.audit.rounds:  # victim updates for attack.py source=<this run> (ggl/audit/capture.py)
        from ggl.audit.capture import AuditCapture

        callbacks.append(AuditCapture(run_dir, cfg.audit, config["data"], cfg.model.name, cfg.defenses, cfg.seed))
    logger = make_logger(cfg.logger, run_dir, name=f"{name}-s{cfg.seed}", group=label,
                         tags=["fedavg", label, cfg.data.name, cfg.model.name, cfg.data.partition],
                         config=config, job_type="federation")
    trainer = build_trainer(cfg.trainer, {
        "max_epochs": cfg.fl.rounds, "check_val_every_n_epoch": 1, "default_root_dir": str(run_dir),
        "logger": logger if logger is not None else False, "callbacks": callbacks,
    })
    trainer.fit(module, datamodule=dm)
    results = writer.results(trainer, module)
    results["run_dir"] = str(run_dir)
    return results
