"""``train.py`` with ``task: fedavg``: build the data, module, defences, logger and Trainer; fit."""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ggl.config import Config, to_container, to_yaml
from ggl.data.datamodule import FederatedDataModule
from ggl.defenses.specs import defenses_label
from ggl.fl.callbacks import build_defense_callbacks, privacy_summary
from ggl.fl.module import FedAvgModule
from ggl.plots import label_histogram_png
from ggl.progress import RoundProgressBar
from ggl.resume import open_run_dir
from ggl.tracking import Stopwatch, is_rank_zero, make_logger, write_json
from ggl.trainer import build_trainer


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


def run_federation(cfg: Config, extra_callbacks=()) -> dict:
    """Train the configured federation; ``extra_callbacks`` join the chain after the configured defences."""
    dm = FederatedDataModule(cfg.data, cfg.fl.eval_batch_size, cfg.seed)
    dm.setup()
    name = run_name(cfg)
    label = defenses_label(cfg.defenses)
    config = to_container(cfg)
    run_dir, ckpt_path = open_run_dir(cfg.resume, cfg.output_dir, name, config, "fl", _RESUMABLE_FL_KEYS,
                                      example="runs/fed_q4/latest")
    if is_rank_zero():
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        hist = write_partition(dm, run_dir, cfg)

    module = FedAvgModule(cfg.model.name, dm.data.channels, dm.data.num_classes, vars(cfg.fl),
                          seed=cfg.seed, init=cfg.model.init)
    writer = ResultsWriter(run_dir, config)
    show_bar = cfg.trainer.get("enable_progress_bar", True)
    callbacks = build_defense_callbacks(cfg.defenses) + list(extra_callbacks) + [RoundProgressBar()] * bool(show_bar) + [
        writer,
        # Lightning 2.6 refreshes last.ckpt only when a top-k file is saved, so keep one (the newest)
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="round{epoch:04d}", save_last=True,
                        save_top_k=1, every_n_epochs=cfg.checkpoint_every, auto_insert_metric_name=False),
    ]
    if cfg.audit.rounds:  # victim updates for attack.py source=<this run> (ggl/audit/capture.py)
        from ggl.audit.capture import AuditCapture

        callbacks.append(AuditCapture(run_dir, cfg.audit, config["data"], cfg.model.name, cfg.defenses, cfg.seed))
    logger = make_logger(cfg.logger, run_dir, name=f"{name}-s{cfg.seed}", group=label,
                         tags=["fedavg", label, cfg.data.name, cfg.model.name, cfg.data.partition],
                         config=config, job_type="federation")
    if logger is not None and is_rank_zero():
        logger.log_table("data/label_histogram", columns=["client"] + [f"class_{c}" for c in range(hist.shape[1])],
                         data=[[i] + row for i, row in enumerate(hist.tolist())])
    trainer = build_trainer(cfg.trainer, {
        "max_epochs": cfg.fl.rounds, "check_val_every_n_epoch": 1, "default_root_dir": str(run_dir),
        "logger": logger if logger is not None else False, "callbacks": callbacks,
    })
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    results = writer.results(trainer, module)
    results["run_dir"] = str(run_dir)
    return results
