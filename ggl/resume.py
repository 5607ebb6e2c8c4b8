"""Continuing a stopped run: find its checkpoint, and refuse to continue a different experiment."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Tuple

from omegaconf import OmegaConf

from ggl.errors import UserError
from ggl.tracking import RUN_DIR_ENV, check_writable, new_run_dir

# top-level keys any resumed run may change: where it runs and how it logs
RESUMABLE_KEYS = {"resume", "trainer", "logger", "name", "output_dir", "checkpoint_every"}


def resolve_resume(resume: str, example: str) -> Tuple[Path, Path]:
    """``resume`` = a run folder (its checkpoints/last.ckpt) or a checkpoint file -> (run_dir, ckpt)."""
    path = Path(resume)
    if path.is_dir():
        run_dir, ckpt = path.resolve(), path.resolve() / "checkpoints" / "last.ckpt"
    else:
        ckpt = path.resolve()
        run_dir = ckpt.parent.parent
    if not ckpt.is_file():
        raise UserError(f"config key 'resume' = {resume!r}: no checkpoint at '{ckpt}' (give a run folder "
                        f"such as {example}, or a .ckpt file)")
    return run_dir, ckpt


def check_same_experiment(run_dir: Path, config: dict, section: str, resumable: Iterable[str]) -> None:
    """Only ``section.<resumable>`` keys (how far to go) and ``RESUMABLE_KEYS`` may differ from the run's."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    resumable = set(resumable)
    diffs = [k for k in config if k not in RESUMABLE_KEYS and k != section and saved.get(k) != config[k]]
    diffs += [f"{section}.{k}" for k in config[section] if k not in resumable
              and saved.get(section, {}).get(k) != config[section][k]]
    if diffs:
        allowed = ", ".join(f"{section}.{k}" for k in sorted(resumable))
        raise UserError(f"resume: {', '.join(diffs)} differ from the run's {saved_file}; a resumed run may "
                        f"only change {allowed}, devices and logging (start a new run instead)")


def open_run_dir(resume: str | None, output_dir: str, name: str, config: dict, section: str,
                 resumable: Iterable[str], example: str) -> Tuple[Path, Path | None]:
    """The run folder of a job: the resumed run's (and its checkpoint), or a fresh one."""
    if not resume:
        return new_run_dir(output_dir, name), None
    run_dir, ckpt = resolve_resume(resume, example)
    check_same_experiment(run_dir, config, section, resumable)
    check_writable(run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP workers join this folder
    return run_dir, ckpt
