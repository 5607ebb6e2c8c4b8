"""The attacker's GAN prior on disk: save, load (``weights_only``), rebuild from the stored spec.

A prior file is a plain dict of tensors and strings/ints, loadable with ``torch.load(weights_only=True)``::

    {"format": "ggl-gan-prior", "version": 1,
     "spec": {"latent_dim", "channels", "image_size", "num_classes", "conditional"},
     "generator": {"class": "ggl.models.gan.Generator", "kwargs": {... e.g. "width": 32}},
     "state_dict": {...}, "meta": {...}}

``load_prior`` builds ``class(latent_dim=, channels=, image_size=, num_classes=, **kwargs)`` (an
``nn.Module`` subclass; nothing else is called), loads the weights, returns a frozen ``PriorGenerator``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from ggl.core.atomic import atomic_write_with
from ggl.core.errors import UserError
from ggl.gan.schema import BUILTIN_GENERATOR
from ggl.core.safe_load import safe_load
from ggl.core.shipped import REPO_ROOT, command, shipped, shipped_candidates

# the shipped prior: the checkout's checkpoints/ first, then the installed package's copy (ggl.checkpoints)
DEFAULT_PRIOR_NAME = "checkpoints/gan_mnist5k.pt"
DEFAULT_PRIOR = shipped(DEFAULT_PRIOR_NAME) or REPO_ROOT / DEFAULT_PRIOR_NAME
DEFAULT_PRIOR_ARGS = "--config gan_mnist.yaml gan.export=checkpoints/gan_mnist5k.pt"
DEFAULT_PRIOR_COMMAND = f"python train.py {DEFAULT_PRIOR_ARGS}"
FORMAT = "ggl-gan-prior"
VERSION = 1
SPEC_KEYS = ("latent_dim", "channels", "image_size", "num_classes")


class PriorGenerator(nn.Module):
    """A generator behind the prior contract: ``G(z, y)`` -> images in [0, 1], plus its spec."""

    def __init__(self, net: nn.Module, latent_dim: int, channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.net = net
        self.latent_dim = int(latent_dim)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.conditional = self.num_classes > 0

    def spec(self) -> Dict[str, Any]:
        return {"latent_dim": self.latent_dim, "channels": self.channels, "image_size": self.image_size,
                "num_classes": self.num_classes, "conditional": self.conditional}

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if self.conditional and y is None:
            raise ValueError(f"this prior is class-conditional ({self.num_classes} classes): "
                             f"pass labels y, a LongTensor of shape (N,)")
        return self.net(z, y if self.conditional else None)


# the generators a prior file may name without the user vouching for them: ggl's own
TRUSTED_GENERATOR_MODULES = ("ggl.models.gan",)


def check_trusted(class_path: str, trusted: Iterable[str], where: str) -> None:
    """Refuse, before any import, a class a prior file names that is neither ggl's nor passed by the user.

    Importing a module runs its top-level code, so a crafted prior naming any importable module would
    run code: only ``TRUSTED_GENERATOR_MODULES`` and the dotted paths in ``trusted`` are imported.
    """
    module_name, _, _ = str(class_path).rpartition(".")
    if module_name in TRUSTED_GENERATOR_MODULES or class_path in set(trusted):
        return
    raise UserError(f"{where} names the generator class '{class_path}', which is not one of ggl's "
                    f"({', '.join(TRUSTED_GENERATOR_MODULES)}); it was not imported. If you trust that file, "
                    f"pass the class explicitly (trusted_generators=['{class_path}'])")


def _import_class(path: str, where: str) -> type:
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"{where}: generator class '{path}' cannot be imported ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"{where}: '{path}' is not a torch.nn.Module subclass")
    return cls


def build_generator(class_path: str, latent_dim: int, channels: int, image_size: int, num_classes: int,
                    kwargs: Optional[Dict[str, Any]] = None, where: str = "config key 'gan.generator'"
                    ) -> PriorGenerator:
    """Instantiate ``class_path`` with the spec (+ kwargs) and wrap it; checks its output shape."""
    cls = _import_class(class_path, where)
    try:
        net = cls(latent_dim=latent_dim, channels=channels, image_size=image_size, num_classes=num_classes,
                  **(kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: '{class_path}' could not be built ({exc})") from None
    G = PriorGenerator(net, latent_dim, channels, image_size, num_classes)
    _check_output(G, where)
    return G


@torch.no_grad()
def _check_output(G: PriorGenerator, where: str) -> None:
    was = G.training
    G.eval()
    device = next(iter(G.parameters()), torch.zeros(())).device
    z = torch.zeros(2, G.latent_dim, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device) if G.conditional else None
    try:
        out = G(z, y)
    except Exception as exc:  # any failure of a user's class is a user problem
        raise UserError(f"{where}: the generator fails on (z, y) ({type(exc).__name__}: {exc})") from None
    finally:
        G.train(was)
    want = (2, G.channels, G.image_size, G.image_size)
    if tuple(out.shape) != want:
        raise UserError(f"{where}: the generator maps z of shape {tuple(z.shape)} to images of shape "
                        f"{tuple(out.shape)}, expected {want}")


def generator_kwargs(cfg_gan) -> Dict[str, Any]:
    kwargs = dict(cfg_gan.generator_kwargs)
    if cfg_gan.generator == BUILTIN_GENERATOR:
        kwargs.setdefault("width", cfg_gan.g_width)
    return kwargs


def prior_state(G: PriorGenerator, class_path: str, kwargs: Dict[str, Any],
                meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The dict ``save_prior`` writes: generator weights only (no discriminator, no optimiser)."""
    return {"format": FORMAT, "version": VERSION, "spec": G.spec(),
            "generator": {"class": class_path, "kwargs": dict(kwargs)},
            "state_dict": {k: v.detach().cpu().clone() for k, v in G.net.state_dict().items()},
            "meta": dict(meta or {})}


def save_prior(path: str | Path, state: Dict[str, Any]) -> Path:
    """Write atomically (``ggl.core.atomic``)."""
    return atomic_write_with(path, lambda fh: torch.save(state, fh))


def _read(path: Path, default: bool) -> Dict[str, Any]:
    if not path.is_file():
        if default:
            where = ", ".join(str(p) for p in shipped_candidates(DEFAULT_PRIOR_NAME))
            raise UserError(f"GAN prior '{path}' not found (the shipped {DEFAULT_PRIOR_NAME}; looked in {where}): "
                            f"reinstall ggl from a wheel or checkout that has it, or create it with: "
                            f"{command('train')} {DEFAULT_PRIOR_ARGS}")
        raise UserError(f"GAN prior '{path}' not found; train one with: {command('train')} --config "
                        f"gan_mnist.yaml gan.export={path}")
    blob = safe_load(path, "GAN prior")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"GAN prior '{path}' is not a ggl GAN prior (no 'format: {FORMAT}' entry); "
                        f"priors are written by {command('train')} --config gan_mnist.yaml")
    if blob.get("version") != VERSION:
        raise UserError(f"GAN prior '{path}' has format version {blob.get('version')!r}; this ggl reads "
                        f"version {VERSION}")
    return blob


def load_prior(path: str | Path = DEFAULT_PRIOR, channels: Optional[int] = None,
               image_size: Optional[int] = None, device: str | torch.device = "cpu",
               trusted_generators: Iterable[str] = ()) -> PriorGenerator:
    """Load a prior for an attack on images of ``channels`` x ``image_size`` (None = don't check).

    The file's generator class must be ggl's own or listed in ``trusted_generators`` (dotted paths the
    user gave explicitly); it is checked before anything is imported.

    Every problem is a one-line ``UserError`` naming the file: missing (with the command that creates
    it), truncated or not a torch file, pickled objects (refused), not a prior, spec mismatch.
    """
    path = Path(path)
    shipped_copies = {c.resolve() for c in shipped_candidates(DEFAULT_PRIOR_NAME)}
    default = path.resolve() in shipped_copies | {DEFAULT_PRIOR.resolve()}
    blob = _read(path, default)
    where = f"GAN prior '{path}'"
    try:
        spec = {k: int(blob["spec"][k]) for k in SPEC_KEYS}
        class_path = str(blob["generator"]["class"])
        kwargs = dict(blob["generator"].get("kwargs", {}))
        state = blob["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where} is incomplete: missing or bad entry {exc}") from None
    for name, want in (("channels", channels), ("image_size", image_size)):
        if want is not None and int(want) != spec[name]:
            raise UserError(f"{where} generates {spec['channels']}x{spec['image_size']}x{spec['image_size']} "
                            f"images but the attacked data are {channels or spec['channels']}x"
                            f"{image_size or spec['image_size']}x{image_size or spec['image_size']} "
                            f"({name} {spec[name]} != {want}); train a prior on that dataset")
    check_trusted(class_path, trusted_generators, where)
    G = build_generator(class_path, **spec, kwargs=kwargs, where=where)
    try:
        G.net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:3])
        raise UserError(f"{where}: weights do not fit its generator spec ({detail[:300]})") from None
    G.meta = dict(blob.get("meta", {}))  # type: ignore[attr-defined]
    return freeze(G.to(device))


def freeze(G: nn.Module) -> nn.Module:
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    return G
