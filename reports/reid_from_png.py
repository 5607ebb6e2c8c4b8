"""PYTHONPATH=. python reports/reid_from_png.py [reports/reconstructions.png]

Re-identification of the shipped report's reconstructions, read back from reports/reconstructions.png.

The per-image tensors of the shipped report are not in the repository; its reconstructions figure is a
mosaic of 32x32 tiles (2 px white pad) drawn with nearest-neighbour scaling, so each tile can be read
back by sampling the centre of every displayed pixel. Fidelity check: each read-back original must
match one private image of mnist5k almost exactly (that also recovers the victims' dataset indices).
"""
import sys
from pathlib import Path

import numpy as np
import torch

from ggl.audit import baselines as B
from ggl.audit.reid import Gallery, chance, load_feature_classifier
from ggl.config import DataConfig
from ggl.data.datamodule import load_split
from ggl.gan.prior import DEFAULT_PRIOR, load_prior
from ggl.metrics import psnr

png = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/reconstructions.png")
import matplotlib.image as mpimg

im = mpimg.imread(png)[..., :3].mean(-1)  # grey, [0, 1]
dark = im < 0.5  # tiles are mostly black; the labels' text is sparse
cols = np.where(dark.mean(0) > 0.3)[0]
rows_ = np.where(dark[:, cols.min():cols.max() + 1].mean(1) > 0.6)[0]
left, right, top, bottom = cols.min(), cols.max(), rows_.min(), rows_.max()
n_cols, n_rows, h, pad = 8, 23, 32, 2
scale_x = (right - left + 1) / (n_cols * (h + pad) - pad)
scale_y = (bottom - top + 1) / (n_rows * (h + pad) - pad)
print(f"png {im.shape}, mosaic at x {left}..{right}, y {top}..{bottom}, scale {scale_x:.4f} x {scale_y:.4f}")


def tile(r, c):
    ys = top + ((r * (h + pad) + np.arange(h) + 0.5) * scale_y).astype(int)
    xs = left + ((c * (h + pad) + np.arange(h) + 0.5) * scale_x).astype(int)
    return torch.tensor(im[np.ix_(ys, xs)], dtype=torch.float32)[None]


grid = torch.stack([torch.stack([tile(r, c) for c in range(n_cols)]) for r in range(n_rows)])  # (23, 8, 1, 32, 32)
data, split = load_split(DataConfig(name="mnist5k"))
priv = torch.as_tensor(split.private)
pimg = data.images[priv]
orig = grid[0]
d = torch.cdist(orig.flatten(1).double(), pimg.flatten(1).double())
nearest = d.argmin(1)
victims = priv[nearest]
fid = psnr(orig, pimg[nearest])
print("victims (dataset index):", victims.tolist(), "labels:", data.labels[victims].tolist())
print("read-back original vs its private image, PSNR dB:", [round(float(v), 1) for v in fid])
second = d.sort(1).values[:, 1] / d.sort(1).values[:, 0]
print("distance ratio 2nd/1st nearest private image:", [round(float(v), 1) for v in second])

classifier, public_hash, reason = load_feature_classifier(DEFAULT_PRIOR)
from ggl.data.splits import indices_hash
assert public_hash == indices_hash(split.public), "classifier not trained on this public split"
gal = Gallery(pimg, data.labels[priv], priv, classifier)
labels = data.labels[victims]
G = load_prior(str(DEFAULT_PRIOR))
pub = torch.as_tensor(split.public)
lo = B.LabelOnly(G, data.images[pub], data.labels[pub], 10)
guesses = lo.images(labels, seed=0)
guesses["prior_sample (png row)"] = grid[22]
names = ["original (sanity)", "fp32, non-adaptive", "q4, non-adaptive", "q4, adaptive", "q4-stochastic-global, non-adaptive",
         "q8-stochastic-global, non-adaptive", "q8, non-adaptive", "q8, adaptive", "q2-stochastic-global, non-adaptive",
         "q1-stochastic-global, non-adaptive", "top0.01-ef, non-adaptive", "top0.01-ef, adaptive", "clip0.25, non-adaptive",
         "clip0.25, adaptive", "clip0.25+nm0.1, non-adaptive", "clip0.25+nm0.1, adaptive", "sign, non-adaptive",
         "sign, adaptive", "q1, non-adaptive", "q1, adaptive", "q2, non-adaptive", "q2, adaptive"]
keys = ["reid_top1_feature_class", "reid_top1_pixel_class", "reid_top1_feature_all", "reid_top1_pixel_all",
        "reid_rr_feature_class"]
sc = gal.score(orig, victims)[0]
print(f"gallery: all {int(sc['reid_gallery_all'])} private images (chance top-1 {chance('top1', sc['reid_gallery_all']):.4f}), "
      f"same class: mean chance top-1 "
      f"{np.mean([chance('top1', r['reid_gallery_class']) for r in gal.score(orig, victims)]):.4f}, "
      f"MRR {np.mean([chance('rr', r['reid_gallery_class']) for r in gal.score(orig, victims)]):.4f}")
print("row | " + " | ".join(k.replace("reid_", "") for k in keys) + " | PSNR (dB)")
rows = [(n, grid[i]) for i, n in enumerate(names)] + [(f"label-only: {k}", v) for k, v in guesses.items()]
for name, imgs in rows:
    s = gal.score(imgs, victims)
    vals = [np.mean([r[k] for r in s]) for k in keys]
    print(f"{name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {float(psnr(imgs, orig).mean()):.2f}")
q4 = gal.score(grid[2], victims)
print("q4 non-adaptive per victim, feature/class rank:", [round(1 / r["reid_rr_feature_class"], 1) for r in q4],
      "pixel/class rank:", [round(1 / r["reid_rr_pixel_class"], 1) for r in q4],
      "class gallery sizes:", [int(r["reid_gallery_class"]) for r in q4])

from ggl.stats import mean_ci, paired

best_top1 = [max(r[k] for r in (gal.score(v[i:i + 1], victims[i:i + 1])[0] for v in list(guesses.values())[:3])
                 for k in ["reid_top1_feature_class"]) for i in range(8)]
for key in ("reid_top1_feature_class", "reid_rr_feature_class", "reid_top1_pixel_class", "reid_top1_feature_all"):
    vals = [r[key] for r in q4]
    gsize = "reid_gallery_" + key.rsplit("_", 1)[1]
    ch = np.mean([chance(key.split("_")[1], r[gsize]) for r in q4])
    print(f"q4 non-adaptive {key}: {mean_ci(vals).fmt('.3f')} (chance {ch:.4f}, n = 8)")
ranks_ = [1 / r["reid_rr_feature_class"] for r in q4]
print(f"q4 non-adaptive feature/class rank: mean {np.mean(ranks_):.1f} of 200, median {np.median(ranks_):.1f} "
      f"(chance mean {(200 + 1) / 2:.1f}); one-sample Wilcoxon of rank - 100.5: p = "
      f"{paired(ranks_, [100.5] * 8).p_value:.3f}")
base_rr = [max(gal.score(v[i:i + 1], victims[i:i + 1])[0]["reid_rr_feature_class"] for v in list(guesses.values())[:3])
           for i in range(8)]
res = paired([r["reid_rr_feature_class"] for r in q4], base_rr)
print(f"q4 non-adaptive RR (feature/class) - best label-only baseline's RR: {res.ci.fmt('.3f')}, Wilcoxon p = "
      f"{res.p_value:.3f}, d_z = {res.cohens_dz:.2f}")
