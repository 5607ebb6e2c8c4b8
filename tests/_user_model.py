"""A user's own classifiers, given to ggl by dotted path (tests/test_flower.py): ``_user_model:PlainNet``
(plain convolutions: the attack's per-candidate fast path applies) and ``_user_model:make_tied`` (a factory
of a net that applies one convolution twice: the fast path refuses it and the attack falls back to vmap)."""
from __future__ import annotations

from torch import nn


class PlainNet(nn.Module):
    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 5, stride=2, padding=2)
        self.act = nn.Sigmoid()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


class TiedNet(nn.Module):
    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(channels, 4, 5, stride=2, padding=2)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)   # applied twice in forward
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(4 * 16 * 16, num_classes)

    def forward(self, x):
        h = self.act(self.stem(x))
        h = self.act(self.shared(self.act(self.shared(h))))
        return self.fc(h.flatten(1))


def make_tied(channels: int, num_classes: int) -> nn.Module:
    return TiedNet(channels, num_classes)
