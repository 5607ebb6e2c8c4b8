"""W&B artifacts and lineage: captures (federation) -> attack -> report, and the GAN prior as a model.

A job that consumes a file rebuilds the producer's artifact from the same files under the same name
(``*_artifact_name`` below), so W&B matches it by content digest to the version the producer logged,
and declares it an input (``use_input``). Offline runs record both in their ``.wandb`` file, and
``wandb sync`` uploads them with the lineage; W&B's ``use_artifact`` refuses offline runs, so there the
run logs the draft with ``use_after_commit`` (what ``use_artifact`` does online for a draft).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

from ggl.runs.logger import GROUP_FILE

CAPTURES, MODEL, ATTACK, REPORT = "captures", "model", "attack", "report"
ATTACK_FILES = ("images.pt", "grid.png")  # what an attack setting's folder holds besides its W&B run


def artifact_name(*parts: str) -> str:
    """W&B artifact names take letters, digits, '-', '_' and '.'; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p for p in parts if p))[:128]


def captures_artifact_name(fed_dir: Path) -> str:
    """The captures of the federation run ``runs/<name>/<stamp>``."""
    fed_dir = Path(fed_dir)
    return artifact_name("captures", fed_dir.parent.name, fed_dir.name)


def prior_artifact_name(path: Path) -> str:
    """A GAN prior: ``runs/<name>/<stamp>/prior.pt`` -> prior-<name>-<stamp>; any other file -> prior-<stem>."""
    path = Path(path)
    if path.name == "prior.pt":
        return artifact_name("prior", path.parent.parent.name, path.parent.name)
    return artifact_name("prior", path.stem)


def attack_artifact_name(setting_dir: Path) -> str:
    """One setting of the attack run ``runs/<name>/<stamp>/<setting>``."""
    setting_dir = Path(setting_dir)
    return artifact_name("attack", setting_dir.parent.parent.name, setting_dir.parent.name, setting_dir.name)


def draft(name: str, kind: str, files: Iterable[Path] = (), folder: Optional[Path] = None, metadata=None):
    """A local ``wandb.Artifact`` of ``files`` (those that exist) and ``folder``; None when it holds nothing."""
    import wandb

    files = [Path(f) for f in files if Path(f).is_file()]
    if not files and (folder is None or not Path(folder).is_dir()):
        return None
    art = wandb.Artifact(name, type=kind, metadata=metadata or {})
    for f in files:
        art.add_file(str(f), name=f.name, policy="immutable")  # run outputs: referenced, not copied
    if folder is not None and Path(folder).is_dir():
        art.add_dir(str(folder), name=Path(folder).name, policy="immutable")
    return art


def log_output(run, art) -> None:
    if run is not None and art is not None:
        run.log_artifact(art)


def use_input(run, art) -> None:
    """Declare ``art`` (a draft) an input of ``run``, online or offline."""
    if run is None or art is None:
        return
    if not getattr(getattr(run, "settings", None), "_offline", True):
        run.use_artifact(art)
    else:  # offline: W&B's use_artifact raises; log the draft as used, which is what it does online
        run._log_artifact(art, is_user_created=True, use_after_commit=True)


def federation_dir(source: str) -> Optional[Path]:
    """The federation run folder an ``attack.source`` points into (the one holding ``audit/``)."""
    p = Path(source).expanduser()
    if not p.exists():
        return None
    p = p.resolve()
    return next((q for q in [p] + list(p.parents) if (q / "audit").is_dir()), None)


def study_group(source: Optional[str]) -> Optional[str]:
    """The W&B group of the federation whose captures ``source`` points at (what it logged, else its name)."""
    fed = federation_dir(source) if source else None
    if fed is None:
        return None
    f = fed / GROUP_FILE
    return f.read_text().strip() if f.is_file() and f.read_text().strip() else fed.parent.name
