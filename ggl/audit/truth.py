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

from ggl.errors import UserError

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = asdict(self)
        blob["format"] = FORMAT
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"ground-truth file '{path}' could not be read ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise UserError(f"'{path}' is not a ggl ground-truth file")
        blob.pop("format")
        return cls(**blob)


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
