"""The evaluator: the only code that opens ground truth. Scores reconstructions against the victim's
private images, beside the prior-only baseline.

Baseline: a random latent of the *inferred* class through the same prior (what the prior alone
gives an attacker who learned the label but nothing else from the update). Leakage is the attack's
score above it. For batch > 1 the reconstructions are matched to the originals by minimum MSE
(Hungarian assignment) before scoring; the baseline is matched the same way.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ggl import metrics
from ggl.audit.truth import GroundTruth
from ggl.errors import UserError
from ggl.seeding import derived_seed


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
    def __init__(self, lpips_net: str = "alex"):
        self.lpips = metrics.LPIPSScorer(lpips_net)
        self._data_cache: Dict[str, object] = {}

    # ------------------------------------------------------------------ ground truth
    def truth(self, path: Path, obs_id: Optional[str] = None) -> Tuple[GroundTruth, Tensor]:
        """The ground truth of a capture and the victim's images, reloaded from its dataset."""
        if not Path(path).is_file():
            raise UserError(f"ground truth '{path}' not found: every observation needs its ground_truth file "
                            f"to be scored")
        gt = GroundTruth.load(path)
        if obs_id is not None and gt.obs_id != obs_id:
            raise UserError(f"ground truth '{path}' belongs to observation '{gt.obs_id}', not '{obs_id}'")
        images = self._dataset(gt.dataset).images[gt.indices]
        return gt, images

    def true_labels(self, path: Path) -> Tensor:
        """ABLATION ONLY (attack.true_labels=true): hand the attacker the true labels."""
        return GroundTruth.load(path).labels.clone()

    def _dataset(self, data_cfg: dict):
        from ggl.config import DataConfig
        from ggl.data.datamodule import load_split

        key = repr(sorted(data_cfg.items()))
        if key not in self._data_cache:
            self._data_cache[key] = load_split(DataConfig(**data_cfg))[0]
        return self._data_cache[key]

    # ------------------------------------------------------------------ scores
    @torch.no_grad()
    def baseline(self, G: nn.Module, labels: Tensor, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(derived_seed(seed, 0xBA5E))
        z = torch.randn(len(labels), int(G.latent_dim), generator=gen)
        return G(z, labels if getattr(G, "conditional", False) else None)

    def scores(self, recon: Tensor, truth: Tensor, model: Optional[nn.Module] = None) -> List[dict]:
        """Per-image scores of ``recon`` against ``truth`` (same order)."""
        recon, truth = recon.float().clamp(0, 1), truth.float()
        out = {"psnr": metrics.psnr(recon, truth), "ssim": metrics.ssim(recon, truth),
               "mse": metrics.mse(recon, truth)}
        lp = self.lpips(recon, truth)
        out["lpips"] = lp
        out["feature_mse"] = metrics.feature_mse(model, recon, truth) if model is not None else None
        rows = []
        for i in range(len(truth)):
            rows.append({k: (None if v is None else float(v[i])) for k, v in out.items()})
        return rows

    def evaluate(self, truth_path: Path, obs_id: str, recon: Tensor, pred_labels: Tensor, G: nn.Module,
                 model: nn.Module, seed: int) -> Tuple[List[dict], Tensor, Tensor, Tensor]:
        """Per-image rows (attack and baseline scores), the originals, the matched reconstructions and
        the matched baseline images, in the order of the victim's images."""
        gt, truth = self.truth(truth_path, obs_id)
        perm = _match(recon, truth)
        recon_m, pred_m = recon[perm], pred_labels[perm]
        base = self.baseline(G, pred_labels, seed)
        base_m = base[_match(base, truth)]
        attack_rows = self.scores(recon_m, truth, model)
        base_rows = self.scores(base_m, truth, model)
        acc = label_accuracy(gt.labels, pred_labels)
        rows = []
        for i in range(len(truth)):
            row = {"observation": obs_id, "image": i, "dataset_index": int(gt.indices[i]), "round": gt.round,
                   "label_true": int(gt.labels[i]), "label_pred": int(pred_m[i]),
                   "label_correct": bool(int(gt.labels[i]) == int(pred_m[i])), "batch_label_acc": acc}
            row.update(attack_rows[i])
            row.update({f"baseline_{k}": v for k, v in base_rows[i].items()})
            rows.append(row)
        return rows, truth, recon_m, base_m


def summarize(rows: List[dict], wall_seconds: float, lpips_reason: Optional[str]) -> dict:
    """The ``summary`` block of results.json for one defence setting."""
    def col(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return np.array(vals, dtype=np.float64) if vals else None

    def mean(key):
        v = col(key)
        return None if v is None else float(v.mean())

    psnr = col("psnr")
    obs_acc = {}
    for r in rows:
        obs_acc[r["observation"]] = (r["batch_label_acc"], obs_acc.get(r["observation"], (0, 0))[1] + 1)
    n = sum(c for _, c in obs_acc.values())
    return {
        "psnr_mean": mean("psnr"), "psnr_std": None if psnr is None else float(psnr.std()),
        "ssim_mean": mean("ssim"), "lpips_mean": mean("lpips"),
        "label_acc": sum(a * c for a, c in obs_acc.values()) / max(1, n),
        "baseline_psnr_mean": mean("baseline_psnr"), "baseline_ssim_mean": mean("baseline_ssim"),
        "baseline_lpips_mean": mean("baseline_lpips"),
        "mse_mean": mean("mse"), "feature_mse_mean": mean("feature_mse"),
        "n_images": len(rows), "wall_seconds": float(wall_seconds),
        "lpips_note": lpips_reason,
    }
