"""Victims: clients whose private images produce the updates the attacker observes.

``fresh_captures`` draws ``audit.num_images`` private images (seeded by ``seed`` and
``STREAM_AUDIT``), computes each victim's update at the configured model with the federation's own
client code (``ggl.fl.client.train_client``), applies every configured defence setting through the
federation's own callbacks (``build_defense_callbacks`` + ``apply_defenses``), and writes the
``Observation`` and the ``GroundTruth`` to separate files.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ggl.attack.observation import Observation
from ggl.audit.truth import GroundTruth, capture_paths
from ggl.errors import UserError
from ggl.fl.update import ClientUpdate
from ggl.seeding import STREAM_AUDIT, STREAM_LOCAL_DATA, generator


def spec_dicts(specs) -> List[dict]:
    return [asdict(s) if is_dataclass(s) else dict(s) for s in specs]


def observation_from_update(arch: str, model: nn.Module, update: ClientUpdate, *, channels: int,
                            num_classes: int, momentum: float, weight_decay: float, local_batch_size: int,
                            defenses, obs_id: str) -> Observation:
    """The server's view of one transmitted update (no private field)."""
    return Observation(
        arch=arch, channels=channels, num_classes=num_classes,
        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        names=list(update.names), update=[t.detach().cpu().clone() for t in update.tensors],
        kind=update.kind, batch_size=int(update.num_samples), local_steps=int(update.meta["local_steps"]),
        lr=float(update.meta["lr"]), momentum=float(momentum), weight_decay=float(weight_decay),
        local_batch_size=int(local_batch_size), round=int(update.round), client_id=int(update.client_id),
        bits=int(update.bits), image_size=int(model_input_size()), defenses=spec_dicts(defenses), obs_id=obs_id)


def model_input_size() -> int:
    return 32  # every dataset source delivers 32x32 images (ggl.data.sources.IMAGE_SIZE)


def load_model_checkpoint(model: nn.Module, path: str) -> None:
    """A state_dict file, or a federation's Lightning checkpoint (keys under ``model.``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config key 'model.checkpoint' = '{path}': file not found")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"model checkpoint '{path}' could not be read ({str(exc).splitlines()[0][:120]})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"model checkpoint '{path}' holds no state dict")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"model checkpoint '{path}' does not fit model.name "
                        f"({str(exc).splitlines()[0][:160]})") from None


def draw_private(private: torch.Tensor | Sequence[int], n: int, seed: int, round: int = 0,
                 client: int = 0) -> torch.Tensor:
    """``n`` distinct indices from ``private``, seeded (STREAM_AUDIT)."""
    private = torch.as_tensor(private, dtype=torch.long)
    if n > len(private):
        raise UserError(f"config key 'audit.num_images' = {n} exceeds the {len(private)} private images available")
    perm = torch.randperm(len(private), generator=generator(seed, round, client, STREAM_AUDIT))
    return private[perm[:n]]


def fresh_captures(cfg, settings: List[Tuple[str, list]], root: Path) -> Dict[str, List[Tuple[Path, Path]]]:
    """Victim updates for every defence setting: {setting label: [(observation, ground truth)]}."""
    from ggl.config import to_container
    from ggl.data.datamodule import load_split
    from ggl.fl.callbacks import apply_defenses, build_defense_callbacks
    from ggl.fl.client import train_client
    from ggl.models import build_model

    data, split = load_split(cfg.data)
    a = cfg.audit
    picked = draw_private(split.private, a.num_images, cfg.seed)
    model = build_model(cfg.model.name, data.channels, data.num_classes, init=cfg.model.init, seed=cfg.seed)
    if cfg.model.checkpoint:
        load_model_checkpoint(model, cfg.model.checkpoint)
    params = {k: v.detach() for k, v in model.named_parameters()}
    data_cfg = to_container(cfg)["data"]
    chains = [(label, build_defense_callbacks(chain)) for label, chain in settings]
    out: Dict[str, List[Tuple[Path, Path]]] = {label: [] for label, _ in settings}
    fl = cfg.fl
    for k in range(a.num_images // a.batch_size):
        idx = picked[k * a.batch_size:(k + 1) * a.batch_size]
        x, y = data.images[idx], data.labels[idx]
        update = train_client(model, params, x, y, client_id=k, round=0, seed=cfg.seed, lr=fl.lr,
                              momentum=fl.momentum, weight_decay=fl.weight_decay, batch_size=fl.batch_size,
                              local_epochs=fl.local_epochs, local_steps=fl.local_steps,
                              data_gen=generator(cfg.seed, 0, k, STREAM_LOCAL_DATA))
        stem = f"r0000_b{k:03d}"
        for label, callbacks in chains:
            sent = apply_defenses(callbacks, None, None, update)
            obs = observation_from_update(cfg.model.name, model, sent, channels=data.channels,
                                          num_classes=data.num_classes, momentum=fl.momentum,
                                          weight_decay=fl.weight_decay, local_batch_size=fl.batch_size,
                                          defenses=dict(settings)[label], obs_id=stem)
            obs_path, truth_path = capture_paths(root, label, stem)
            obs.save(obs_path)
            out[label].append((obs_path, truth_path))
        GroundTruth(obs_id=stem, dataset=data_cfg, indices=idx.clone(), labels=y.clone(), round=0,
                    client_id=k).save(truth_path)
    return out
