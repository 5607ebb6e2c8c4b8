"""Add your own dataset: one loader in one file (docs/extending.md, "Add your own dataset"; a test checks
that the docs show this file verbatim and that it loads). A toy: 1,000 noisy 32x32 images whose brightness
is their label.

    PYTHONPATH=examples python train.py --config fed_fp32.yaml plugins=[my_dataset] data.name=noise10
"""
import torch

from ggl.data.sources import ImageData, register


@register("noise10")      # data.name=noise10
def noise10(root, download):
    """A loader (data.root, data.download) -> ImageData: (N, C, 32, 32) float images in [0, 1], int64 labels."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(1000) % 10
    images = (torch.rand(1000, 1, 32, 32, generator=gen) * 0.2 + labels.view(-1, 1, 1, 1) / 12).clamp(0, 1)
    return ImageData("noise10", images, labels, num_classes=10)
