"""The classifiers clients train and attackers invert; all take (N, C, 32, 32) images in [0, 1]."""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and two dense layers with ReLU: trains well under FedAvg (the default)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNetDLG(nn.Module):
    """The 4-conv sigmoid LeNet of the gradient-leakage papers (DLG, iDLG, GGL)."""

    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        act = nn.Sigmoid
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, 5, padding=2, stride=2), act(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), act(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), act(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), act(),
        )
        self.fc = nn.Linear(12 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def dlg_init_(model: nn.Module) -> nn.Module:
    """DLG/iDLG initialisation: every weight and bias drawn from U(-0.5, 0.5)."""
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


def resnet18_32(channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool) with GroupNorm instead of BatchNorm.

    BatchNorm's running statistics are ill-defined under FedAvg with non-IID clients and break
    per-sample gradients (vmap); GroupNorm has neither problem.
    """
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes, norm_layer=lambda c: nn.GroupNorm(min(32, c // 2), c))
    model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
