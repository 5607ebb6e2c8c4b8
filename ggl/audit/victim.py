"""Victims: clients whose private images produce the updates the attacker observes.

A victim draws private images (``draw_private``, seeded by ``STREAM_AUDIT``), computes its update with
the federation's own client code as ``audit.probe`` says (``probe_update``), and ``capture`` writes
what each defence setting transmits as an ``Observation`` and the images' indices as a separate
``GroundTruth``. Both capture paths use it: ``fresh_captures`` (victims of a fresh model, for
``attack.py``) and the federation's ``AuditCapture`` callback (``ggl.audit.capture``).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ggl.attack.observation import Observation
from ggl.audit.schema import AuditConfig
from ggl.audit.truth import GroundTruth, capture_paths
from ggl.core.errors import ConfigError, UserError
from ggl.core.seeding import STREAM_AUDIT, STREAM_LOCAL_DATA, generator
from ggl.data.datamodule import load_split
from ggl.data.sources import IMAGE_SIZE
from ggl.defenses import to_dicts
from ggl.fl.callbacks import apply_defenses, build_defense_callbacks
from ggl.fl.client import train_client
from ggl.fl.schema import FLConfig
from ggl.fl.update import ClientUpdate
from ggl.models import build_model
from ggl.models.checkpoint import load_into

# one defence setting as the capture sees it: (label, the transform a client applies, its spec chain)
Setting = Tuple[str, Callable[[ClientUpdate], ClientUpdate], list]


def check_probe_fits(batch_size: int, available: int, client: int) -> None:
    """A probe's batch must come out of the victim client's own data."""
    if batch_size > available:
        raise ConfigError(f"config key 'audit.batch_size' = {batch_size}: the probe's batch exceeds the {available} "
                          f"private images of the victim client {client} (audit.victim_client); lower "
                          f"audit.batch_size to <= {available}")


def probe_update(model: nn.Module, params: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                 audit: AuditConfig, fl: FLConfig, client_id: int, round: int, seed: int) -> ClientUpdate:
    """The victim's update on (x, y) as ``audit.probe`` says (before defences), with the client's own
    code and the federation's ``fl`` protocol."""
    steps = audit.probe_steps()
    return train_client(model, params, x, y, client_id=client_id, round=round, seed=seed, lr=fl.lr,
                        momentum=fl.momentum, weight_decay=fl.weight_decay, batch_size=fl.batch_size,
                        local_epochs=fl.local_epochs, local_steps=steps if steps is not None else fl.local_steps,
                        data_gen=generator(seed, round, client_id, STREAM_LOCAL_DATA))


def probe_kind(obs: Observation) -> str:
    """Which probe produced ``obs``: ``fedsgd`` (a gradient) or ``local_update`` (a multi-step delta)."""
    return "fedsgd" if obs.kind == "gradient" else "local_update"


def observation_from_update(arch: str, model: nn.Module, update: ClientUpdate, *, channels: int,
                            num_classes: int, fl: FLConfig, defenses, obs_id: str) -> Observation:
    """The server's view of one transmitted update (no private field)."""
    return Observation(
        arch=arch, channels=channels, num_classes=num_classes,
        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        names=list(update.names), update=[t.detach().cpu().clone() for t in update.tensors],
        kind=update.kind, batch_size=int(update.num_samples), local_steps=int(update.meta["local_steps"]),
        lr=float(update.meta["lr"]), momentum=float(fl.momentum), weight_decay=float(fl.weight_decay),
        local_batch_size=int(fl.batch_size), round=int(update.round), client_id=int(update.client_id),
        bits=int(update.bits), image_size=IMAGE_SIZE, defenses=to_dicts(defenses), obs_id=obs_id)


def capture(root: Path, update: ClientUpdate, settings: Sequence[Setting], truth: GroundTruth, *, model: nn.Module,
            model_name: str, channels: int, num_classes: int, fl: FLConfig) -> Dict[str, Tuple[Path, Path]]:
    """What the victim transmits under each setting, saved as observations, and its ground truth apart:
    {setting label: (observation file, ground-truth file)}."""
    out = {}
    for label, defend, specs in settings:
        obs = observation_from_update(model_name, model, defend(update), channels=channels,
                                      num_classes=num_classes, fl=fl, defenses=specs, obs_id=truth.obs_id)
        out[label] = capture_paths(root, label, truth.obs_id)
        obs.save(out[label][0])
    truth.save(next(iter(out.values()))[1])
    return out


def draw_private(private: torch.Tensor | Sequence[int], n: int, seed: int, round: int = 0,
                 client: int = 0) -> torch.Tensor:
    """``n`` distinct indices from ``private``, seeded (STREAM_AUDIT)."""
    private = torch.as_tensor(private, dtype=torch.long)
    if n > len(private):
        raise UserError(f"config key 'audit.num_images' = {n} exceeds the {len(private)} private images available")
    perm = torch.randperm(len(private), generator=generator(seed, round, client, STREAM_AUDIT))
    return private[perm[:n]]


def fresh_captures(cfg, settings: List[Tuple[str, list]], root: Path) -> Dict[str, List[Tuple[Path, Path]]]:
    """Victim updates at a fresh (or ``model.checkpoint``) model for every defence setting, one victim
    per batch: {setting label: [(observation, ground truth)]}."""
    data, split = load_split(cfg.data)
    a = cfg.audit
    a.probe_steps()  # a bad probe key fails before any work
    picked = draw_private(split.private, a.num_images, cfg.seed)
    model = build_model(cfg.model.name, data.channels, data.num_classes, init=cfg.model.init, seed=cfg.seed)
    if cfg.model.checkpoint:
        load_into(model, cfg.model.checkpoint, cfg.model.name)
    params = {k: v.detach() for k, v in model.named_parameters()}
    chains = [(label, build_defense_callbacks(chain), chain) for label, chain in settings]
    defended = [(label, lambda u, cbs=cbs: apply_defenses(cbs, None, None, u), chain) for label, cbs, chain in chains]
    out: Dict[str, List[Tuple[Path, Path]]] = {label: [] for label, _ in settings}
    for k in range(a.num_images // a.batch_size):
        idx = picked[k * a.batch_size:(k + 1) * a.batch_size]
        x, y = data.images[idx], data.labels[idx]
        update = probe_update(model, params, x, y, audit=a, fl=cfg.fl, client_id=k, round=0, seed=cfg.seed)
        truth = GroundTruth(obs_id=f"r0000_b{k:03d}", dataset=asdict(cfg.data), indices=idx.clone(),
                            labels=y.clone(), round=0, client_id=k)
        paths = capture(root, update, defended, truth, model=model, model_name=cfg.model.name,
                        channels=data.channels, num_classes=data.num_classes, fl=cfg.fl)
        for label, pair in paths.items():
            out[label].append(pair)
    return out
