"""Ground truth of a captured update: which private images the victim used. Only the evaluator reads it.

Captures are laid out as ``<root>/observations/<setting>/<stem>.pt`` (what the attacker gets) and
``<root>/ground_truth/<stem>.pt`` (dataset indices and labels; the dataset config to reload them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load
from ggl.core.atomic import atomic_write_with

FORMAT = "ggl.ground_truth/1"
OBS_DIR = "observations"
TRUTH_DIR = "ground_truth"
# per attacked setting of an attack run: its originals, reconstructions and prior-only images (tensors)
IMAGES_FILE = "images.pt"


@dataclass
class GroundTruth:
    obs_id: str
    dataset: dict          # the `data:` config the indices refer to
    indices: Tensor        # (B,) dataset indices of the victim's images (from the private split)
    labels: Tensor         # (B,)
    round: int = 0
    client_id: int = 0

    def save(self, path: str | Path) -> Path:
        blob = asdict(self)
        blob["format"] = FORMAT
        return atomic_write_with(path, lambda fh: torch.save(blob, fh))

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        try:
            blob = safe_load(path, "ground-truth file")  # weights_only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        except Exception as exc:
            raise UserError(f"ground-truth file '{path}' could not be read ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise UserError(f"'{path}' is not a ggl ground-truth file")
        blob.pop("format")
        return cls(**_checked(blob, path))


def _checked(blob: dict, path) -> dict:
    """The fields of a ground-truth file, each of the type the evaluator relies on."""
    known = set(GroundTruth.__dataclass_fields__)
    unknown = sorted(str(k) for k in blob if k not in known)
    missing = sorted(k for k in ("obs_id", "dataset", "indices", "labels") if k not in blob)
    if unknown or missing:
        what = f"unknown key '{unknown[0]}'" if unknown else f"no '{missing[0]}'"
        raise UserError(f"ground-truth file '{path}' has {what}; it was not written by ggl (recapture it)")
    idx, labels = blob["indices"], blob["labels"]
    if not (isinstance(idx, Tensor) and isinstance(labels, Tensor) and idx.dim() == 1 and labels.dim() == 1
            and len(idx) == len(labels) and len(idx) > 0 and not idx.is_floating_point()
            and not labels.is_floating_point() and isinstance(blob["dataset"], dict)):
        raise UserError(f"ground-truth file '{path}': 'indices' and 'labels' must be equal-length 1-D integer "
                        f"tensors and 'dataset' a mapping; recapture it")
    if int(idx.min()) < 0:  # Python would read -1 as the dataset's last image: the wrong victim
        raise UserError(f"ground-truth file '{path}': dataset index {int(idx.min())} is negative; indices "
                        f"count from 0 (recapture it)")
    return blob


def capture_paths(root: Path, setting: str, stem: str) -> Tuple[Path, Path]:
    return Path(root) / OBS_DIR / setting / f"{stem}.pt", Path(root) / TRUTH_DIR / f"{stem}.pt"


def find_captures(root: Path) -> Dict[str, List[Tuple[Path, Path]]]:
    """{setting: [(observation, ground truth), ...]} under a capture root, sorted by file name."""
    out: Dict[str, List[Tuple[Path, Path]]] = {}
    obs_root = Path(root) / OBS_DIR
    if not obs_root.is_dir():
        return out
    for setting_dir in sorted(p for p in obs_root.iterdir() if p.is_dir()):
        pairs = [(p, Path(root) / TRUTH_DIR / p.name) for p in sorted(setting_dir.glob("*.pt"))]
        if pairs:
            out[setting_dir.name] = pairs
    return out
