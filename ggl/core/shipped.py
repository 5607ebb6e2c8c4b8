"""Files ggl ships: found in the checkout first (configs/, checkpoints/ beside ggl/), then in the installed
package (an installed wheel carries them as ggl/configs and ggl/checkpoints; pyproject.toml maps the
packages ggl.configs and ggl.checkpoints onto those folders), resolved with ``importlib.resources``.

Also ``PROG``: the command the user typed (``ggl`` when the ``ggl`` command runs), so that hints name a
command the user actually has (``ggl train ...`` or ``python train.py ...``).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]

PROG: Optional[str] = None  # "ggl" once the ggl command runs (ggl.cli.main); None: the scripts
_SCRIPTS = {"train": "python train.py", "attack": "python attack.py", "sweep": "python -m ggl.sweep",
            "report": "python -m ggl.report"}


def command(job: str) -> str:
    """How the user runs ``job`` (train, attack, sweep, report) from where they are."""
    return f"{PROG} {job}" if PROG else _SCRIPTS[job]


def package_root() -> Path:
    """The installed ggl package's folder (``importlib.resources``; a plain folder for any pip install)."""
    return Path(str(resources.files("ggl")))


def shipped_candidates(relpath: str | Path) -> List[Path]:
    """Where a shipped file (``checkpoints/gan_mnist5k.pt``, ``configs/x.yaml``) may be: checkout, package."""
    rel = Path(relpath)
    out = [REPO_ROOT / rel, package_root() / rel]
    return [p for i, p in enumerate(out) if p not in out[:i]]


def shipped(relpath: str | Path) -> Optional[Path]:
    """The first existing copy of a shipped file or folder (checkout first, then package), else None."""
    return next((p for p in shipped_candidates(relpath) if p.exists()), None)
