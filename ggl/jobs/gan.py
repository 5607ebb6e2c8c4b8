"""``train.py`` with ``task: gan``: train the attacker's GAN prior on the public split and measure it.

Steps: load the split (public only is used for training) -> train the domain classifier on the
public split -> fit ``GANModule`` with Lightning (sample grid every ``gan.sample_every`` epochs,
quality every ``gan.quality_every``) -> export the (EMA, BN-recalibrated) generator as a prior ->
final quality vs the real-vs-real reference -> ``results.json``; with ``gan.export=PATH`` also the
shipped files ``PATH`` (prior), ``<stem>.json``, ``<stem>_classifier.pt`` and ``<stem>_samples.png``.
"""
from __future__ import annotations

import functools
import json
import platform
import shlex
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from ggl.config import Config, experiment, to_container, to_yaml
from ggl.data.datamodule import load_split
from ggl.data.splits import indices_hash
from ggl.core.errors import ConfigError
from ggl.gan.module import EpochSeededSampler, GANModule, sample_grid
from ggl.gan.prior import generator_kwargs, prior_state, save_prior
from ggl.gan.quality import (QualityReference, build_reference, classifier_state, evaluate_generator,
                             seeded_subset, train_classifier)
from ggl.models.gan import count_params
from ggl.core.atomic import atomic_write_text
from ggl.core import shipped
from ggl.core.shipped import command
from ggl.runs.checkpointing import AtomicCheckpointIO, run_checkpoints
from ggl.runs.folder import open_run
from ggl.runs.artifacts import MODEL, draft, log_output, prior_artifact_name
from ggl.runs.logger import Stopwatch, make_logger, resolve_logger, write_json
from ggl.runs.trainer import build_trainer


def run_name(cfg: Config) -> str:
    if cfg.name:
        return cfg.name
    source = getattr(cfg, "_source", None)
    return Path(source).stem if source else f"gan_{cfg.data.name}"


def _save_png(grid: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)


class SampleGrid(Callback):
    """Every ``every`` epochs: the fixed-seed sample grid to ``samples/epochNNNN.png`` and to W&B."""

    def __init__(self, run_dir: Path, seed: int, every: int, per_class: int, size: int):
        self.dir = Path(run_dir) / "samples"
        self.seed, self.every, self.per_class, self.size = seed, every, per_class, size

    def on_train_epoch_end(self, trainer, module: GANModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and not trainer.should_stop and epoch != trainer.max_epochs:
            return
        G = module.sampling_generator
        was = G.training
        G.eval()  # the running BN statistics; the exported prior recalibrates them
        grid = sample_grid(G, self.seed, self.per_class, self.size)
        G.train(was)
        if trainer.is_global_zero:
            _save_png(grid, self.dir / f"epoch{epoch:04d}.png")
            if trainer.logger is not None and hasattr(trainer.logger, "log_image"):
                trainer.logger.log_image(key="samples", images=[grid], step=trainer.global_step,
                                         caption=[f"epoch {epoch}"])


class QualityMonitor(Callback):
    """Every ``every`` epochs: FID and class agreement of the prior as it would be exported now."""

    def __init__(self, ref: QualityReference, seed: int, every: int):
        self.ref, self.seed, self.every = ref, seed, every

    def on_train_epoch_end(self, trainer, module: GANModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self.every or epoch % self.every:
            return
        metrics = evaluate_generator(module.export_generator(), self.ref, self.seed)
        module.epoch_extra.update({f"quality/{k}": v for k, v in metrics.items()})
        for k, v in metrics.items():
            module.log(f"quality/{k}", v, on_step=False, on_epoch=True)


# what a resumed GAN run may change besides devices and logging: how long it trains, how it is monitored
_RESUMABLE_GAN_KEYS = ("epochs", "max_steps", "sample_every", "quality_every", "export", "export_overwrite",
                       "num_threads")


def _command(cfg: Config) -> str:
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if shipped.PROG and argv0 == shipped.PROG and sys.argv[1:2] == ["train"]:  # the ggl command
        return command("train") + " " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    if argv0 in ("train.py", "ggl-train"):
        return "python train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    source = getattr(cfg, "_source", None)
    return f"python train.py --config {Path(source).name if source else '<config>'}  (called from Python)"


def _versions() -> dict:
    import lightning
    import numpy
    import omegaconf
    import torchmetrics
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__, "numpy": numpy.__version__,
            "omegaconf": omegaconf.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads()}


def run_gan(cfg: Config) -> dict:
    """Train, measure and save a GAN prior; returns the results dict (also in ``results.json``)."""
    previous_threads = torch.get_num_threads()
    if cfg.gan.num_threads:
        torch.set_num_threads(cfg.gan.num_threads)
    try:
        return _run_gan(cfg)
    finally:
        torch.set_num_threads(previous_threads)


def _run_gan(cfg: Config) -> dict:
    clock = Stopwatch()
    g = cfg.gan
    data, split = load_split(cfg.data)
    public = torch.from_numpy(split.public)
    if len(public) < g.batch_size:
        raise ConfigError(f"config key 'gan.batch_size' = {g.batch_size} exceeds the {len(public)} public "
                          f"images of '{cfg.data.name}'; lower it or raise data.public_fraction")
    heldout = torch.from_numpy(split.test[seeded_subset(len(split.test), g.eval_samples, cfg.seed)])
    x_pub, y_pub = data.images[public], data.labels[public]

    name = run_name(cfg)
    config = to_container(cfg)
    if g.export:
        check_export(Path(g.export), g.export_overwrite)
    tracking = resolve_logger(cfg.logger)  # before the folder: a bad W&B setting leaves none
    run = open_run(cfg.resume, cfg.output_dir, name, config, "gan", _RESUMABLE_GAN_KEYS,
                   example="runs/gan_mnist/latest", experiment=functools.partial(experiment, task="gan"))
    done = finished_gan(run, _max_epochs(g, len(public)))
    if done is not None:
        run.release()
        return done
    try:
        results = _train_in(run, cfg, clock, data, split, public, heldout, x_pub, y_pub, name, config,
                            tracking)
    except BaseException:
        if not run.committed:  # set-up failed: no orphan folder, latest not moved
            run.abandon()
        run.release()
        raise
    run.release()
    return results


def _max_epochs(g, num_public: int) -> int:
    """Epochs the run trains: ``gan.epochs``, or fewer when ``gan.max_steps`` ends it first."""
    if g.max_steps is None:
        return g.epochs
    return min(g.epochs, -(-g.max_steps // (num_public // g.batch_size)))


def finished_gan(run, epochs: int) -> dict | None:
    """A resumed run whose results.json already has ``epochs`` epochs: its results, unchanged (nothing
    is retrained or re-exported). None: epochs are left, or it was killed before results.json."""
    if run.ckpt is None:
        return None
    try:
        results = json.loads((run.path / "results.json").read_text())
    except (OSError, ValueError):
        return None
    done = (results.get("timing") or {}).get("epochs") if isinstance(results, dict) else None
    if not isinstance(done, int) or done < epochs:
        return None
    if done > epochs:
        raise ConfigError(f"config key 'gan.epochs' = {epochs}: the run '{run.path}' already trained {done} "
                          f"epochs; resume with gan.epochs >= {done}, or start a new run")
    print(f"resume: the run '{run.path}' already finished its {done} epochs; nothing to do", file=sys.stderr)
    return results


def export_files(path: Path) -> dict:
    stem = path.with_suffix("")
    return {"prior": str(path), "record": f"{stem}.json", "classifier": f"{stem}_classifier.pt",
            "samples": f"{stem}_samples.png"}


def check_export(path: Path, overwrite: bool) -> None:
    """Refuse to replace a shipped prior (and its record, classifier, samples) unless asked to."""
    existing = [f for f in export_files(path).values() if Path(f).exists()]
    if existing and not overwrite:
        raise ConfigError(f"config key 'gan.export' = '{path}': {', '.join(existing)} exist(s); choose another "
                          f"path or set gan.export_overwrite=true to replace them")


def _train_in(run, cfg: Config, clock, data, split, public, heldout, x_pub, y_pub, name, config,
              tracking) -> dict:
    """Build, fit, measure and write, inside the run folder ``run``."""
    atomic_write_text(run.path / "config.yaml", to_yaml(cfg))
    trainer, module, logger, classifier, ref = _build(run, cfg, data, public, heldout, x_pub, y_pub, name,
                                                        config, tracking)
    classifier_seconds = clock.seconds  # everything before GAN training: data, domain classifier, reference
    loader = DataLoader(TensorDataset(x_pub, y_pub), batch_size=cfg.gan.batch_size,
                        sampler=EpochSeededSampler(len(public), cfg.seed), drop_last=True)
    fit_clock = Stopwatch()
    run.commit()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(run.ckpt) if run.ckpt else None,
                weights_only=True)
    timing = {"train_seconds": fit_clock.seconds, "classifier_seconds": classifier_seconds}
    G = module.export_generator()  # the prior: EMA generator with recalibrated BN, in eval mode
    results, state = _measure(cfg, G, module, ref, split, public, config, clock, timing, run.path)
    grid = sample_grid(G, cfg.seed, cfg.gan.grid_per_class, cfg.gan.grid_size)
    if trainer.is_global_zero:
        _write(run.path, cfg, results, state, classifier, grid, logger, trainer.global_step)
        run.publish()  # results.json is whole (also when no checkpoint was due)
    metrics = results["metrics"]
    agree = metrics["class_agreement"]
    print(f"done: fid={metrics['fid']:.2f} (real-vs-real {metrics['fid_real_vs_real']:.2f})"
          + (f" class_agreement={agree:.3f} (real {metrics['class_agreement_real']:.3f})" if agree is not None else "")
          + f" epochs={results['timing']['epochs']} wall={results['timing']['wall_seconds']:.0f}s -> {run.path}")
    return results


def _build(run, cfg: Config, data, public, heldout, x_pub, y_pub, name, config, tracking):
    """The GAN module, its logger, the Trainer with its callbacks, the domain classifier and the reference."""
    g, run_dir = cfg.gan, run.path
    module = GANModule(to_container(cfg)["gan"], data.channels, data.images.shape[-1], data.num_classes,
                       seed=cfg.seed)
    logger = make_logger(tracking, run_dir, name=f"{name}-s{cfg.seed}", group="gan",
                         tags=["gan", cfg.data.name, g.loss, "conditional" if g.conditional else "unconditional"],
                         config=config, job_type="gan")
    trainer_defaults = {"max_epochs": _max_epochs(g, len(public)), "default_root_dir": str(run_dir),
                        "logger": logger if logger is not None else False,
                        "limit_val_batches": 0, "use_distributed_sampler": False}
    # the quality monitor needs the classifier, which needs the device: build the trainer in two steps
    trainer = build_trainer(cfg.trainer, {**trainer_defaults, "callbacks": []})
    if trainer.world_size > 1:
        raise ConfigError("GAN training runs on one device; set trainer.devices=1 (config section 'trainer')")
    classifier = train_classifier(x_pub, y_pub, data.num_classes, seed=cfg.seed, epochs=g.classifier_epochs,
                                  device=trainer.strategy.root_device)
    ref = build_reference(classifier, x_pub, data.images[heldout], data.labels[heldout])
    callbacks = [SampleGrid(run_dir, cfg.seed, g.sample_every, g.grid_per_class, g.grid_size),
                 QualityMonitor(ref, cfg.seed, g.quality_every),
                 run_checkpoints(run_dir, "epoch{epoch:04d}", cfg.checkpoint_every)]
    trainer = build_trainer(cfg.trainer, {**trainer_defaults, "callbacks": callbacks,
                                          "plugins": [AtomicCheckpointIO(saved=run.publish)]})
    return trainer, module, logger, classifier, ref


def _measure(cfg: Config, G, module, ref, split, public, config, clock, timing, run_dir) -> tuple:
    """The prior's quality against the real-vs-real reference: (results dict, the prior's state)."""
    g = cfg.gan
    public_hash = indices_hash(split.public)
    final = evaluate_generator(G, ref, cfg.seed)
    epochs_done = module.history[-1]["epoch"] + 1 if module.history else 0
    metrics = {
        "fid": final["fid"], "fid_real_vs_real": ref.metrics["fid_real_vs_real"],
        "class_agreement": final.get("class_agreement"),
        "class_agreement_real": ref.metrics["class_agreement_real"] if G.conditional else None,
        "classifier_heldout_accuracy": ref.metrics["class_agreement_real"],
        "num_generated": ref.metrics["num_heldout"], "num_heldout_real": ref.metrics["num_heldout"],
        "num_public": ref.metrics["num_public"],
    }
    ips = [h["images_per_second"] for h in module.history]
    meta = {
        "dataset": cfg.data.name, "split_seed": cfg.data.split_seed, "public_fraction": cfg.data.public_fraction,
        "public_indices_hash": public_hash, "num_public": len(public), "seed": cfg.seed, "loss": g.loss,
        "epochs_trained": epochs_done, "metrics": metrics,
    }
    state = prior_state(G, g.generator, generator_kwargs(g), meta)
    results = {
        "config": config,
        "command": _command(cfg),
        "data": {"dataset": cfg.data.name, "public_indices_hash": public_hash, "num_public": len(public),
                 "num_private": int(len(split.private)), "num_test": int(len(split.test)),
                 "public_private_overlap": int(len(set(split.public.tolist()) & set(split.private.tolist())))},
        "spec": G.spec(), "generator": state["generator"],
        "params": {"generator": count_params(module.G), "discriminator": count_params(module.D)},
        "metrics": metrics,
        "timing": {"wall_seconds": clock.seconds, "train_seconds": timing["train_seconds"],
                   "classifier_seconds": timing["classifier_seconds"], "epochs": epochs_done,
                   "images_per_second_median": sorted(ips)[len(ips) // 2] if ips else None,
                   "torch_threads": torch.get_num_threads()},
        "versions": _versions(),
        "history": module.history,
        "run_dir": str(run_dir),
    }
    return results, state


def _write(run_dir: Path, cfg: Config, results: dict, state: dict, classifier, grid: torch.Tensor, logger,
           step: int) -> None:
    """The run's prior, classifier, samples and results.json (and the shipped copies with ``gan.export``)."""
    save_prior(run_dir / "prior.pt", state)
    save_prior(run_dir / "classifier.pt", classifier_state(classifier))
    _save_png(grid, run_dir / "samples.png")
    write_json(run_dir / "results.json", results)
    if cfg.gan.export:
        results["exported"] = _export(Path(cfg.gan.export), state, classifier, grid, results, cfg.gan.export_overwrite)
        write_json(run_dir / "results.json", results)
    if logger is not None:
        logger.log_metrics({f"final/{k}": v for k, v in results["metrics"].items() if isinstance(v, (int, float))},
                           step=step)
        logger.log_image(key="final_samples", images=[grid], step=step)
        log_output(logger.experiment, draft(prior_artifact_name(run_dir / "prior.pt"), MODEL, [run_dir / "prior.pt"],
                                            metadata={"metrics": results["metrics"], "spec": results["spec"]}))
        logger.experiment.finish()


def _export(path: Path, state: dict, classifier, grid: torch.Tensor, results: dict, overwrite: bool) -> dict:
    """The shipped artefacts: prior, its record (.json), the domain classifier and the sample grid."""
    check_export(path, overwrite)  # again: a file may have appeared while this run trained
    files = export_files(path)
    save_prior(path, state)
    save_prior(Path(files["classifier"]), classifier_state(classifier))
    _save_png(grid, Path(files["samples"]))
    record = {k: results[k] for k in ("command", "data", "spec", "generator", "params", "metrics", "timing",
                                      "versions")}
    record["files"] = files
    record["config"] = results["config"]
    write_json(Path(files["record"]), record)
    return files
