"""Config schema of the GAN prior (``gan:`` section); keys documented in configs/gan_mnist.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ggl.core.checks import count, one_of
from ggl.core.errors import ConfigError

LOSSES = ("nonsat", "hinge", "wgan-gp")
AUGMENTS = ("none", "translation")
LR_DECAYS = ("none", "linear")
BUILTIN_GENERATOR = "ggl.models.gan.Generator"


def _err(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config key 'gan.{key}' = {value!r} {why}")


@dataclass
class GANConfig:
    # architecture
    latent_dim: int = 128
    conditional: bool = True
    generator: str = BUILTIN_GENERATOR
    generator_kwargs: Dict[str, Any] = field(default_factory=dict)
    g_width: int = 32
    d_width: int = 32
    spectral_norm: bool = True
    # objective and optimisation
    loss: str = "nonsat"
    gp_weight: float = 10.0
    ac_weight: float = 1.0
    n_critic: int = 1
    augment: str = "none"
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    lr_decay: str = "none"
    batch_size: int = 64
    epochs: int = 50
    max_steps: Optional[int] = None
    ema: float = 0.999
    bn_recalibration: int = 20
    # monitoring, quality, export
    grid_per_class: int = 10
    grid_size: int = 100
    sample_every: int = 1
    quality_every: int = 10
    eval_samples: int = 1000
    classifier_epochs: int = 10
    export: Optional[str] = None
    export_overwrite: bool = False
    num_threads: Optional[int] = 1

    def check(self) -> None:
        for key in ("latent_dim", "g_width", "d_width", "n_critic", "batch_size", "epochs",
                    "grid_per_class", "grid_size", "eval_samples", "classifier_epochs"):
            count(getattr(self, key), f"gan.{key}")
        if self.sample_every < 1:
            raise _err("sample_every", self.sample_every, "must be >= 1")
        count(self.max_steps, "gan.max_steps", lo=None)
        count(self.bn_recalibration, "gan.bn_recalibration", lo=None)
        count(self.num_threads, "gan.num_threads", lo=None)
        for key, allowed in (("loss", LOSSES), ("augment", AUGMENTS), ("lr_decay", LR_DECAYS)):
            one_of(getattr(self, key), allowed, f"gan.{key}")
        if not 0.0 <= self.ac_weight <= 100.0:
            raise _err("ac_weight", self.ac_weight, "is out of range [0, 100]")
        if not 0.0 <= self.gp_weight <= 1e4:
            raise _err("gp_weight", self.gp_weight, "is out of range [0, 10000]")
        for key in ("lr_g", "lr_d"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise _err(key, getattr(self, key), "is out of range (0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise _err("betas", list(self.betas), "must be two Adam betas in [0, 1), e.g. [0.5, 0.999]")
        if self.max_steps is not None and self.max_steps < 1:
            raise _err("max_steps", self.max_steps, "must be >= 1 (or null to train gan.epochs epochs)")
        if not 0.0 <= self.ema < 1.0:
            raise _err("ema", self.ema, "is out of range [0, 1) (0 = no EMA of the generator)")
        if self.bn_recalibration < 0:
            raise _err("bn_recalibration", self.bn_recalibration, "must be >= 0")
        if self.quality_every < 0:
            raise _err("quality_every", self.quality_every, "must be >= 0 (0 = only after training)")
        if self.num_threads is not None and self.num_threads < 1:
            raise _err("num_threads", self.num_threads, "must be >= 1 (or null for torch's default)")
        if "." not in self.generator:
            raise _err("generator", self.generator, "must be a dotted path 'package.module.Class'")
        reserved = {"latent_dim", "channels", "image_size", "num_classes"} & set(self.generator_kwargs)
        if reserved:
            raise _err("generator_kwargs", dict(self.generator_kwargs),
                       f"must not set {', '.join(sorted(reserved))} (they come from gan.latent_dim, "
                       f"gan.conditional and the data)")
