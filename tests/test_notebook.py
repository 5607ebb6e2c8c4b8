"""notebooks/walkthrough.ipynb runs end to end (nbclient), with its budgets cut to the minimum so CI
stays fast: a federation with 4-bit updates, the shipped prior, an attack, images and scores."""
from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from ggl.config import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "walkthrough.ipynb"
PRIOR = REPO_ROOT / "checkpoints" / "gan_mnist5k.pt"


def _set_parameters(nb, **values) -> None:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# parameters"))
    for key, value in values.items():
        cell.source, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", cell.source, flags=re.M)
        assert n == 1, f"parameter {key} not in the notebook's parameters cell"


def test_walkthrough_runs_end_to_end(tmp_path):
    assert PRIOR.is_file(), f"the walkthrough needs the shipped prior {PRIOR} (ggl.gan.prior.DEFAULT_PRIOR)"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _set_parameters(nb, ROUNDS=1, NUM_IMAGES=2, GENERATIONS=2, POPULATION=6, OUTPUT_DIR=str(tmp_path / "runs"))
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on any cell error
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert re.search(r"test accuracy after 1 rounds: 0\.\d{3}", text)
    assert "2 captured updates" in text and "'bits': 4" in text
    assert re.search(r"q4: attack PSNR \d+\.\d\d ± \d+\.\d\d dB, SSIM 0\.\d{3}, labels recovered \d+%", text)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the prior's samples and the originals / reconstructions grid
    assert (tmp_path / "runs" / "walkthrough_attack_q4" / "latest" / "grid.png").is_file()
