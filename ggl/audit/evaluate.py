"""The evaluator: the only code that opens ground truth. Scores reconstructions against the victim's
private images, beside the label-only baselines, with pixel metrics and re-identification.

Baselines (``ggl.audit.baselines``): the prior's and the public split's class mean of the *inferred*
class, and one random prior sample of it: what an attacker who learned the label but nothing else
from the update can show. Every metric is computed for each; ``leakage_<metric>`` is the attack's
score minus the best baseline's on the same image. Re-identification (``ggl.audit.reid``) ranks the
victim among the private split's images. For batch > 1 the reconstructions are matched to the
originals by minimum MSE (Hungarian assignment) before scoring; each baseline is matched the same way.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ggl.audit import metrics
from ggl.audit import baselines as label_only
from ggl.audit.records import ImageRecord
from ggl.audit.reid import Gallery, chance, load_feature_classifier
from ggl.audit.truth import GroundTruth
from ggl.core.errors import UserError
from ggl.data.datamodule import load_split
from ggl.data.schema import DataConfig
from ggl.data.splits import indices_hash
from ggl.gan.prior import DEFAULT_PRIOR


def _match(recon: Tensor, truth: Tensor) -> np.ndarray:
    """perm such that recon[perm[i]] is matched to truth[i]."""
    if len(truth) == 1:
        return np.zeros(1, dtype=np.int64)
    from scipy.optimize import linear_sum_assignment

    cost = ((truth[:, None].float() - recon[None].float()) ** 2).flatten(2).mean(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def label_accuracy(true: Tensor, pred: Tensor) -> float:
    """Share of the batch's labels recovered (multiset overlap: order does not matter)."""
    t, p = Counter(true.tolist()), Counter(pred.tolist())
    return sum(min(t[k], p[k]) for k in t) / max(1, len(true))


class Evaluator:
    """``prior_path``: the GAN prior whose shipped domain classifier (``<stem>_classifier.pt``, trained
    on the public split) gives re-identification its feature space (default: the shipped prior); it
    is used only when it was trained on the public split of the dataset being scored."""

    def __init__(self, lpips_net: str = "alex", prior_path: Optional[Path] = None):
        self.lpips = metrics.LPIPSScorer(lpips_net)
        self._data_cache: Dict[str, object] = {}
        self._gallery_cache: Dict[str, Gallery] = {}
        self._label_only_cache: Dict[tuple, label_only.LabelOnly] = {}
        self.reid_note: Optional[str] = None  # why feature-space re-identification is null, if it is
        self.prior_path = Path(DEFAULT_PRIOR if prior_path is None else prior_path)

    # ------------------------------------------------------------------ ground truth
    def truth(self, path: Path, obs_id: Optional[str] = None) -> Tuple[GroundTruth, Tensor]:
        """The ground truth of a capture and the victim's images, reloaded from its dataset."""
        if not Path(path).is_file():
            raise UserError(f"ground truth '{path}' not found: every observation needs its ground_truth file "
                            f"to be scored")
        gt = GroundTruth.load(path)
        if obs_id is not None and gt.obs_id != obs_id:
            raise UserError(f"ground truth '{path}' belongs to observation '{gt.obs_id}', not '{obs_id}'")
        data = self._dataset(gt.dataset, path)[0]
        if int(gt.indices.max()) >= len(data):
            raise UserError(f"ground truth '{path}': dataset index {int(gt.indices.max())} is out of range for "
                            f"'{data.name}' ({len(data)} images); it belongs to another dataset (recapture it)")
        return gt, data.images[gt.indices]

    def true_labels(self, path: Path) -> Tensor:
        """ABLATION ONLY (attack.true_labels=true): hand the attacker the true labels."""
        return GroundTruth.load(path).labels.clone()

    def _dataset(self, data_cfg: dict, path: Optional[Path] = None):
        key = repr(sorted(data_cfg.items()))
        if key not in self._data_cache:
            try:
                cfg = DataConfig(**data_cfg)
            except TypeError as exc:  # a key DataConfig does not have
                raise UserError(f"ground truth '{path}': its dataset config does not fit this version of ggl "
                                f"({exc}); recapture it") from None
            self._data_cache[key] = load_split(cfg)
        return self._data_cache[key]

    def gallery(self, data_cfg: dict) -> Gallery:
        """The private split as the re-identification gallery, with the public classifier's features
        when that classifier was trained on this dataset's public split."""
        key = repr(sorted(data_cfg.items()))
        if key not in self._gallery_cache:
            data, split = self._dataset(data_cfg)
            classifier, public_hash, reason = load_feature_classifier(self.prior_path)
            if classifier is not None and public_hash != indices_hash(split.public):
                classifier, reason = None, (f"the classifier beside {self.prior_path} was trained on another "
                                            f"public split ({public_hash}) than this dataset's")
            if classifier is not None and classifier.arch["channels"] != data.channels:
                classifier, reason = None, f"the classifier beside {self.prior_path} takes other images"
            idx = torch.as_tensor(split.private, dtype=torch.long)
            self._gallery_cache[key] = Gallery(data.images[idx], data.labels[idx], idx, classifier, reason)
        return self._gallery_cache[key]

    def label_only(self, data_cfg: dict, G: nn.Module) -> label_only.LabelOnly:
        """The label-only baselines of a prior and a dataset: from the prior and the *public* split only."""
        key = (repr(sorted(data_cfg.items())), id(G))
        if key not in self._label_only_cache:
            data, split = self._dataset(data_cfg)
            pub = torch.as_tensor(split.public, dtype=torch.long)
            self._label_only_cache[key] = label_only.LabelOnly(G, data.images[pub], data.labels[pub],
                                                               int(data.num_classes))
        return self._label_only_cache[key]

    # ------------------------------------------------------------------ scores
    @torch.no_grad()
    def baseline(self, G: nn.Module, labels: Tensor, seed: int) -> Tensor:
        """One random prior sample of each label (the ``prior_sample`` baseline)."""
        return label_only.prior_sample(G, labels, seed)

    def scores(self, recon: Tensor, truth: Tensor, model: Optional[nn.Module] = None) -> List[dict]:
        """Per-image scores of ``recon`` against ``truth`` (same order)."""
        recon, truth = recon.float().clamp(0, 1), truth.float()
        out = metrics.score_images(recon, truth, metrics.Inputs(model=model, lpips=self.lpips))
        rows = []
        for i in range(len(truth)):
            rows.append({k: (None if v is None else float(v[i])) for k, v in out.items()})
        return rows

    def evaluate(self, truth_path: Path, obs_id: str, recon: Tensor, pred_labels: Tensor, G: nn.Module,
                 model: nn.Module, seed: int, tags: dict) -> Tuple[List[ImageRecord], Tensor, Tensor, Tensor]:
        """One ``ImageRecord`` per victim image (attack scores, every label-only baseline's scores, leakage;
        ``tags``: the job's fields ``setting``, ``defense``, ``attacker``, ``adaptive``, ``seed``,
        ``federation``, ``probe``), the originals, the matched reconstructions and the matched
        prior-sample images, in the victim's image order."""
        gt, truth = self.truth(truth_path, obs_id)
        perm = _match(recon, truth)
        recon_m, pred_m = recon[perm].float().cpu(), pred_labels[perm]
        gallery = self.gallery(gt.dataset)
        self.reid_note = gallery.feature_reason
        guesses = self.label_only(gt.dataset, G).images(pred_labels.cpu(), seed)
        guesses = {name: img[_match(img, truth)] for name, img in guesses.items()}
        attack_rows = self._all_scores(recon_m, truth, model, gallery, gt.indices)
        base_rows = {name: self._all_scores(img, truth, model, gallery, gt.indices) for name, img in guesses.items()}
        acc = label_accuracy(gt.labels, pred_labels)
        records = []
        for i in range(len(truth)):
            baselines = {name: {k: v for k, v in base_rows[name][i].items() if not k.startswith("reid_gallery")}
                         for name in label_only.BASELINES}
            leak = {k: label_only.leakage(k, v, {b: s[k] for b, s in baselines.items()})
                    for k, v in attack_rows[i].items() if not k.startswith("reid_gallery")}
            records.append(ImageRecord(
                **tags, round=gt.round, capture_id=obs_id, victim_index=int(gt.indices[i]), image=i,
                label=int(gt.labels[i]), label_pred=int(pred_m[i]), batch_label_acc=acc,
                metrics=dict(attack_rows[i]), baselines=baselines, leakage=leak))
        return records, truth, recon_m, guesses["prior_sample"]

    def _all_scores(self, images: Tensor, truth: Tensor, model: Optional[nn.Module], gallery: Gallery,
                    victims: Tensor) -> List[dict]:
        rows = self.scores(images, truth, model)
        for row, reid in zip(rows, gallery.score(images, victims)):
            row.update(reid)
        return rows


def summarize(records: List[ImageRecord], wall_seconds: float, lpips_reason: Optional[str],
              reid_note: Optional[str] = None) -> dict:
    """The ``summary`` block of results.json for one defence setting: the mean of every per-image score
    (``<key>_mean``), the re-identification chance levels, and ``baseline_*`` = the random prior sample,
    ``best_baseline_*`` = the best label-only baseline per image."""
    def col(key):
        vals = [v for v in (r.metric(key) for r in records) if v is not None]
        return np.array(vals, dtype=np.float64) if vals else None

    def mean(key):
        v = col(key)
        return None if v is None else float(v.mean())

    psnr = col("psnr")
    obs_acc = {}
    for r in records:
        obs_acc[r.capture_id] = (r.batch_label_acc, obs_acc.get(r.capture_id, (0, 0))[1] + 1)
    n = sum(c for _, c in obs_acc.values())
    out = {
        "psnr_mean": mean("psnr"), "psnr_std": None if psnr is None else float(psnr.std()),
        "ssim_mean": mean("ssim"), "lpips_mean": mean("lpips"),
        "label_acc": sum(a * c for a, c in obs_acc.values()) / max(1, n),
        "baseline_psnr_mean": mean("baseline_prior_sample_psnr"),
        "baseline_ssim_mean": mean("baseline_prior_sample_ssim"),
        "baseline_lpips_mean": mean("baseline_prior_sample_lpips"),
        "mse_mean": mean("mse"), "feature_mse_mean": mean("feature_mse"),
        "n_images": len(records), "wall_seconds": float(wall_seconds),
        "lpips_note": lpips_reason, "reid_feature_note": reid_note,
    }
    for key in metrics.METRICS:
        out.setdefault(f"{key}_mean", mean(key))
        out[f"best_baseline_{key}_mean"] = mean(f"best_baseline_{key}")
        out[f"leakage_{key}_mean"] = mean(f"leakage_{key}")
    for gallery in ("all", "class"):
        sizes = col(f"reid_gallery_{gallery}")
        for kind in ("top1", "rr"):
            out[f"reid_{kind}_{gallery}_chance"] = (None if sizes is None else
                                                    float(np.mean([chance(kind, m) for m in sizes])))
    return out
