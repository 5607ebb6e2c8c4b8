"""The attacker: Generative Gradient Leakage (Li et al., CVPR 2022) on one ``Observation``.

The attacker sees only an ``Observation`` (global model, transmitted update, public metadata) and a
GAN prior trained on public data. It never imports ``ggl.data`` nor receives private images, labels
or dataset indices (``tests/test_attack_roles.py`` checks the import graph). Ground truth and scoring
live in ``ggl.audit`` (the evaluator).

    obs = Observation.load(path)
    result = attack(obs, G, cfg.attack, seed)          # a SearchResult: images, labels, loss curve
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ggl.attack.device import attack_device
from ggl.attack.labels import infer_labels
from ggl.attack.objective import GGLObjective
from ggl.attack.observation import Observation
from ggl.attack.search import SearchResult, run_search, search_seeds, search_units
from ggl.core.errors import UserError

__all__ = ["Observation", "GGLObjective", "SearchResult", "attack", "check_prior_fits", "infer_labels",
           "model_and_labels", "prior_samples", "run_search", "search_seeds", "search_units"]


def check_prior_fits(G: nn.Module, obs: Observation, source: str = "observation") -> None:
    """A prior must make images of the observed model's input shape (and classes, if conditional)."""
    g_shape = (int(G.channels), int(G.image_size), int(G.image_size))
    if g_shape != tuple(obs.input_shape):
        raise UserError(f"the GAN prior makes {g_shape[0]}x{g_shape[1]}x{g_shape[2]} images but the observed "
                        f"model '{obs.arch}' ({source}) takes {obs.channels}x{obs.image_size}x{obs.image_size}; "
                        f"use a prior trained on the same dataset (attack.prior)")
    if getattr(G, "conditional", False) and int(G.num_classes) != obs.num_classes:
        raise UserError(f"the conditional GAN prior has {G.num_classes} classes but the observed model "
                        f"'{obs.arch}' ({source}) has {obs.num_classes}; use a prior of the same dataset")


@torch.no_grad()
def prior_samples(G: nn.Module, n: int, num_classes: int, seed: int) -> Tensor:
    """Random images from the prior (random classes): the attacker's stand-in for typical inputs."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, int(G.latent_dim), generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen) if getattr(G, "conditional", False) else None
    return G(z, y)


def model_and_labels(obs: Observation, G: nn.Module, seed: int, labels: Optional[Tensor] = None,
                     model: Optional[nn.Module] = None) -> Tuple[nn.Module, Tensor]:
    """The attacked model (rebuilt from ``obs`` unless given) and the labels (given, or inferred from the
    last layer's gradient; for a batch, with prior samples as probes): what every latent attacker starts from."""
    model = model if model is not None else obs.build_model()
    if labels is None:
        probes = prior_samples(G, 64, obs.num_classes, seed) if obs.batch_size > 1 else None
        labels = infer_labels(obs, model, probes)
    return model, labels


def attack(obs: Observation, G: nn.Module, cfg, seed: int, labels: Optional[Tensor] = None,
           tick=None, model: Optional[nn.Module] = None, watch=None) -> SearchResult:
    """Reconstruct the images behind ``obs``. ``labels`` overrides label inference (ablation only).
    The search runs on ``cfg.device``; the result comes back on the CPU. ``watch``: see ``run_search``."""
    model, labels = model_and_labels(obs, G, seed, labels, model)
    objective = GGLObjective(obs, G, labels, loss=cfg.loss, kl_weight=cfg.kl_weight, adaptive=cfg.adaptive,
                             evaluation=cfg.evaluation, model=model,
                             device=attack_device(getattr(cfg, "device", "auto")))
    return run_search(objective, cfg, seed, tick=tick, watch=watch)
