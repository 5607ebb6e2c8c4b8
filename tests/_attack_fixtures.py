"""Helpers of the attack tests: a tiny stand-in GAN prior (the ``ggl.gan.prior`` contract) and
observations computed without the data module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ggl.attack.observation import Observation
from ggl.models import build_model


class TinyPrior(nn.Module):
    """Follows the prior contract: latent_dim, num_classes, conditional, channels, image_size;
    G(z, y) -> (N, C, 32, 32) in [0, 1]; eval mode, frozen, deterministic."""

    def __init__(self, latent_dim: int = 8, num_classes: int = 10, channels: int = 1,
                 conditional: bool = True, image_size: int = 32, seed: int = 0):
        super().__init__()
        self.latent_dim, self.channels, self.image_size = latent_dim, channels, image_size
        self.conditional = conditional
        self.num_classes = num_classes if conditional else 0
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(max(num_classes, 1), latent_dim, generator=g))
        self.fc1 = nn.Linear(latent_dim, 64)
        self.fc2 = nn.Linear(64, channels * 8 * 8)
        with torch.no_grad():
            for p in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias):
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5) * 2)
        self.eval()
        self.requires_grad_(False)

    def forward(self, z, y=None):
        h = z + self.embed[y] if self.conditional else z
        x = torch.sigmoid(self.fc2(torch.tanh(self.fc1(h))))
        x = x.view(-1, self.channels, 8, 8)
        return F.interpolate(x, size=self.image_size, mode="nearest")


def client_gradient(model, x, y):
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def make_observation(x, y, arch="lenet", init="dlg", seed=0, defenses=(), transform=None,
                     num_classes=10) -> Observation:
    """A FedSGD observation of images x (B, C, 32, 32) with labels y at a seeded model."""
    model = build_model(arch, x.shape[1], num_classes, init=init, seed=seed)
    grads = client_gradient(model, x, y)
    if transform is not None:
        grads = transform(grads)
    return Observation(arch=arch, channels=x.shape[1], num_classes=num_classes,
                       state={k: v.detach().clone() for k, v in model.state_dict().items()},
                       names=[n for n, _ in model.named_parameters()], update=grads, kind="gradient",
                       batch_size=len(y), local_steps=1, lr=0.1, local_batch_size=len(y),
                       defenses=[dict(d) for d in defenses], obs_id="test")


def tiny_victim():
    """(TinyPrior, the observation of its class-4 image from a seeded latent, the label): one victim in a second."""
    G = TinyPrior()
    y = torch.tensor([4])
    x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(3)), y)
    return G, make_observation(x, y), y


@pytest.fixture(autouse=False)
def one_torch_thread():
    """On a shared 2-core machine two OpenMP threads per process spin against other processes (measured
    here: 50x slower); the attack tests run with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
