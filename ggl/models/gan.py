"""The GAN nets of the attacker's prior: a DCGAN-style generator and a spectral-norm discriminator.

Square images of ``image_size`` (a power of two >= 8; 32 here), 1 or 3 channels, optionally conditional:

- ``Generator(z, y)`` -> images in [0, 1]; a class enters as a learned 4x4 class map added to the projected
  latent and as conditional batch norm (SNGAN/BigGAN); in eval mode a pure per-sample function of (z, y).
- ``Discriminator(x, y)`` -> one logit per image; spectral norm (optional, e.g. off for WGAN-GP), a
  projection term ``<embed(y), features>`` when conditional (Miyato & Koyama, 2018), an optional AC-GAN head.

``GeneratorSpec`` records and checks the generator's constructor arguments; a prior file stores the
generator's class path, kwargs and the prior spec instead, from which ``ggl.gan.prior`` rebuilds it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


@dataclass(frozen=True)
class GeneratorSpec:
    """The generator's constructor arguments (see the module docstring)."""

    latent_dim: int = 128
    channels: int = 1
    image_size: int = 32
    num_classes: int = 0  # 0 = unconditional
    width: int = 64       # channels of the last hidden layer; doubled at every lower resolution

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.latent_dim < 1 or self.width < 1 or self.num_classes < 0:
            raise ValueError(f"invalid generator spec {self.to_dict()}")
        if self.channels not in (1, 3):
            raise ValueError(f"generator channels must be 1 or 3, not {self.channels}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"generator image_size must be a power of two >= 8, not {self.image_size}")


def _stages(image_size: int) -> int:
    """Number of 2x up/down-sampling stages between 4x4 and ``image_size``."""
    return int(math.log2(image_size)) - 2


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose affine gain/bias are looked up per class; plain affine BN when unconditional."""

    def __init__(self, num_features: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, num_features)
            self.bias = nn.Embedding(num_classes, num_features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Optional[Tensor]) -> Tensor:
        h = self.bn(x)
        if self.num_classes:
            h = h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]
        return h


class Generator(nn.Module):
    """DCGAN generator: z -> 4x4 -> (transposed conv, cBN, ReLU) x stages -> image in [0, 1]."""

    def __init__(self, latent_dim: int = 128, channels: int = 1, image_size: int = 32,
                 num_classes: int = 0, width: int = 64):
        super().__init__()
        self.spec = GeneratorSpec(latent_dim, channels, image_size, num_classes, width)
        self.spec.validate()
        n = _stages(image_size)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. [4w, 2w, w] for 32x32
        self.fc = nn.Linear(latent_dim, chans[0] * 16)
        if num_classes:  # the class enters twice: a learned 4x4 map (= one-hot beside z) and per-class BN
            self.class_map = nn.Embedding(num_classes, chans[0] * 16)
            nn.init.normal_(self.class_map.weight, std=0.02)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(chans[0], num_classes)])
        self.ups = nn.ModuleList()
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            self.ups.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False))
            self.norms.append(ConditionalBatchNorm2d(c_out, num_classes))
        self.out = nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1)
        self._c0 = chans[0]

    # the attack's contract: plain attributes
    @property
    def latent_dim(self) -> int:
        return self.spec.latent_dim

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def conditional(self) -> bool:
        return self.spec.conditional

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def forward(self, z: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if self.conditional and y is None:
            raise ValueError("this generator is class-conditional: pass labels y (LongTensor of shape (N,))")
        if not self.conditional:
            y = None
        h = self.fc(z)
        if self.conditional:
            h = h + self.class_map(y)
        h = h.view(z.shape[0], self._c0, 4, 4)
        # ReLUs in place on the norms' fresh outputs (no backward reads those): the same values, a pass less
        h = self.norms[0](h, y).relu_()
        for up, norm in zip(self.ups, self.norms[1:]):
            h = norm(up(h), y).relu_()
        # tanh mapped to [0, 1]: the range of the data
        return torch.tanh(self.out(h)) * 0.5 + 0.5


class Discriminator(nn.Module):
    """DCGAN discriminator with spectral norm and an optional class projection; one logit per image."""

    def __init__(self, channels: int = 1, image_size: int = 32, num_classes: int = 0, width: int = 64,
                 spectral_norm: bool = True, aux_classifier: bool = False):
        super().__init__()
        sn = _sn if spectral_norm else (lambda m: m)
        n = _stages(image_size)
        chans = [width * 2 ** i for i in range(n)]  # e.g. [w, 2w, 4w] for 32x32
        layers, c_in = [], channels
        for c_out in chans:
            layers += [sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.body = nn.Sequential(*layers, nn.Flatten())
        feat = chans[-1] * 16
        self.head = sn(nn.Linear(feat, 1))
        self.num_classes = num_classes
        if num_classes:
            self.embed = sn(nn.Embedding(num_classes, feat))
        # AC-GAN: a class head on the same features (used when gan.ac_weight > 0)
        self.aux = sn(nn.Linear(feat, num_classes)) if (aux_classifier and num_classes) else None

    def forward(self, x: Tensor, y: Optional[Tensor] = None, return_aux: bool = False):
        h = self.body(x * 2.0 - 1.0)  # images arrive in [0, 1]
        out = self.head(h).squeeze(1)
        if self.num_classes:
            out = out + (self.embed(y) * h).sum(1)
        if return_aux:
            return out, (self.aux(h) if self.aux is not None else None)
        return out


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
