"""Victims: clients whose private images produce the updates the attacker observes.

``fresh_captures`` draws ``audit.num_images`` private images (seeded by ``seed`` and
``STREAM_AUDIT``), computes each victim's update at the configured model with the federation's own
client code (``ggl.fl.client.train_client``), applies every configured defence setting through the
federation's own callbacks (``build_defense_callbacks`` + ``apply_defenses``), and writes the
``Observation`` and the ``GroundTruth`` to separate files.

The probe (``audit.probe``) is what a victim's update is computed as:

* ``fedsgd``: the gradient of one local step on the batch of ``audit.batch_size`` images (the GGL
  paper's setting);
* ``local_update``: what the client really sends in a round: the weight delta after
  ``audit.local_steps`` SGD steps (``fl.lr``, ``fl.momentum``, ``fl.weight_decay``, mini-batches of
  ``fl.batch_size``) on its batch of ``audit.batch_size`` images;
* unset (``null``): the federation's own protocol as configured in ``fl`` (the behaviour before the
  key existed).

The probe is recorded in every observation by what it produced (``kind``: gradient / delta,
``local_steps``, ``batch_size``); ``probe_kind(obs)`` names it for results and reports.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ggl.attack.observation import Observation
from ggl.audit.truth import GroundTruth, capture_paths
from ggl.core.errors import ConfigError, UserError
from ggl.fl.update import ClientUpdate
from ggl.core.seeding import STREAM_AUDIT, STREAM_LOCAL_DATA, generator
from ggl.core.safe_load import safe_load


PROBES = ("fedsgd", "local_update")
DEFAULT_PROBE_STEPS = 5   # local_update: local SGD steps when audit.local_steps is unset


def _get(section: Any, key: str, default: Any = None) -> Any:
    """``section.key`` of a config object or mapping (the federation module keeps ``fl`` as a dict)."""
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def probe_of(audit) -> Tuple[Optional[str], Optional[int]]:
    """(probe kind or None, its local steps or None) of the ``audit:`` section, checked."""
    kind = _get(audit, "probe")
    steps = _get(audit, "local_steps")
    if kind is not None and kind not in PROBES:
        raise ConfigError(f"config key 'audit.probe' = {kind!r} is not one of {', '.join(PROBES)} (or null)")
    if kind == "local_update":
        steps = DEFAULT_PROBE_STEPS if steps is None else steps
        if not isinstance(steps, int) or steps < 2:
            raise ConfigError(f"config key 'audit.local_steps' = {steps!r}: a local update takes >= 2 steps "
                              f"(one step is the fedsgd probe: set audit.probe=fedsgd)")
    return kind, (1 if kind == "fedsgd" else steps if kind == "local_update" else None)


def check_probe_fits(batch_size: int, available: int, client: int) -> None:
    """A probe's batch must come out of the victim client's own data."""
    if batch_size > available:
        raise ConfigError(f"config key 'audit.batch_size' = {batch_size}: the probe's batch exceeds the {available} "
                          f"private images of the victim client {client} (audit.victim_client); lower "
                          f"audit.batch_size to <= {available}")


def probe_update(model: nn.Module, params: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                 audit, fl, client_id: int, round: int, seed: int, data_gen: torch.Generator) -> ClientUpdate:
    """The victim's update on (x, y) as ``audit.probe`` says (before defences), with the client's own
    code (``ggl.fl.client.train_client``) and the federation's ``fl`` protocol."""
    from ggl.fl.client import train_client

    _, steps = probe_of(audit)
    return train_client(model, params, x, y, client_id=client_id, round=round, seed=seed, lr=_get(fl, "lr"),
                        momentum=_get(fl, "momentum"), weight_decay=_get(fl, "weight_decay"),
                        batch_size=_get(fl, "batch_size"), local_epochs=_get(fl, "local_epochs", 1.0),
                        local_steps=steps if steps is not None else _get(fl, "local_steps"), data_gen=data_gen)


def probe_kind(obs: Observation) -> str:
    """Which probe produced ``obs``: ``fedsgd`` (a gradient) or ``local_update`` (a multi-step delta)."""
    return "fedsgd" if obs.kind == "gradient" else "local_update"


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
        blob = safe_load(p, "model checkpoint")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
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
    from ggl.models import build_model

    data, split = load_split(cfg.data)
    a = cfg.audit
    probe_of(a)  # a bad probe key fails before any work
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
        update = probe_update(model, params, x, y, audit=a, fl=fl, client_id=k, round=0, seed=cfg.seed,
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
