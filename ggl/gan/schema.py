"""Config schema of the GAN prior (``gan:`` section); keys documented in configs/gan_mnist.yaml."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GANConfig:
    latent_dim: int = 128
    conditional: bool = True

    def check(self) -> None:
        pass
