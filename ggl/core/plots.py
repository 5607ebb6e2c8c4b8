"""Figures written next to results (matplotlib, headless)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ggl.core.atomic import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, **kwargs) -> Path:
    """``fig`` as a PNG at ``path`` through the one atomic writer: a full disk leaves no truncated image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


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
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


def image_rows_png(path: Path, rows, title: str = "", bold=("original", "prior only"), columns=None) -> Path:
    """Rows of images, one labelled row per (label, images (N, C, H, W) in [0, 1]), drawn as one mosaic
    (one image on one axis: dozens of rows stay fast to draw). Labels starting with one of ``bold``
    (the references: originals, prior-only images) are set in bold. ``columns``: a title per column
    (e.g. the victim's id and label), set above the mosaic."""
    pad = 2
    rows = [(label, imgs.detach().float().cpu().clamp(0, 1)) for label, imgs in rows]
    n = max(imgs.shape[0] for _, imgs in rows)
    c, h, w = rows[0][1].shape[1:]
    mosaic = np.ones(((h + pad) * len(rows), (w + pad) * n, 3), dtype=np.float32)
    for i, (_, imgs) in enumerate(rows):
        for j in range(imgs.shape[0]):
            tile = imgs[j].permute(1, 2, 0).numpy()
            mosaic[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = \
                np.repeat(tile, 3, axis=-1) if c == 1 else tile[..., :3]
    plt = _pyplot()
    scale = 0.6 / h  # inches per pixel: 0.6 in per image
    fig, ax = plt.subplots(figsize=(3.2 + mosaic.shape[1] * scale, 0.4 + mosaic.shape[0] * scale), dpi=110)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (h + pad) + h / 2 for i in range(len(rows))])
    ax.set_yticklabels([label for label, _ in rows], fontsize=8)
    for tick, (label, _) in zip(ax.get_yticklabels(), rows):
        if label.startswith(tuple(bold)):
            tick.set_fontweight("bold")
    if columns:
        ax.xaxis.tick_top()
        ax.set_xticks([j * (w + pad) + w / 2 for j in range(len(columns))])
        ax.set_xticklabels(list(columns), fontsize=6, rotation=90)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=28 if columns else 6)
    path = Path(path)
    try:  # the labels are wider than a fixed layout would reserve
        save_figure(fig, path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
