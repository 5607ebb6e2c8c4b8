"""Figures written next to results (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_histogram_png(hist: np.ndarray, path: Path, title: str) -> Path:
    """Heat-map of a (clients x classes) label histogram: what a non-IID partition looks like."""
    plt = _pyplot()
    clients, classes = hist.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * classes, 1.0 + 0.32 * clients), dpi=120)
    im = ax.imshow(hist, cmap="viridis", aspect="auto")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_xticks(range(classes))
    ax.set_yticks(range(clients))
    ax.set_title(title, fontsize=9)
    if clients * classes <= 400:
        for (i, j), v in np.ndenumerate(hist):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6,
                    color="white" if v < hist.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="samples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
