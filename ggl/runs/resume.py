"""The run folder of a job: a fresh one, or the stopped run it continues (refusing a different experiment).

``open_run`` returns a ``RunFolder``. Only rank 0 creates, locks and writes; a fresh folder becomes
``latest`` only when the job's set-up succeeded (``commit``), and is removed if the set-up fails
(``abandon``), so a bad input never leaves an orphan folder nor moves ``latest``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from omegaconf import OmegaConf

from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load
from ggl.runs.folder import RunLock, check_run_name, check_writable, create_run_dir, new_run_dir, point_latest

# the top-level keys that define each job's experiment; everything else (logging, devices, where the
# run is written, other jobs' sections such as gan.* in a federation's config) may change on resume
EXPERIMENT_KEYS: Dict[str, Tuple[str, ...]] = {
    "fedavg": ("task", "seed", "data", "model", "fl", "defenses", "audit"),
    "gan": ("task", "seed", "data", "gan"),
    "attack": ("task", "seed", "data", "model", "attack"),
}
_SECTION_TASK = {"fl": "fedavg", "gan": "gan", "attack": "attack"}


def experiment(config: dict, task: Optional[str] = None) -> dict:
    """The part of a resolved config that defines the job's results (``EXPERIMENT_KEYS`` of its task)."""
    task = task or config.get("task")
    keys = EXPERIMENT_KEYS.get(task)
    if keys is None:
        return dict(config)
    return {k: _normalised(k, config.get(k)) for k in keys}


def _normalised(key: str, value: Any) -> Any:
    """A section as the current schema reads it, so a config saved before a key was added (with the
    default it now has) still describes the same experiment: sections merged onto the schema's
    defaults, defense entries through their own parser."""
    if key in ("defenses", "attack") and value is not None:
        from ggl.audit.victim import spec_dicts
        from ggl.defenses.specs import parse_defense

        def chain(entries):
            try:
                return spec_dicts([parse_defense(dict(e), key) for e in entries])
            except Exception:  # not parseable any more: compare as written
                return entries
        if key == "defenses":
            return chain(value)
        if isinstance(value, dict) and isinstance(value.get("defenses"), list):
            value = {**value, "defenses": [chain(c) if isinstance(c, list) else c for c in value["defenses"]]}
    if isinstance(value, dict) and key in ("data", "model", "fl", "audit", "gan"):
        from ggl.config import Config

        try:
            schema = OmegaConf.structured(getattr(Config(), key))
            return OmegaConf.to_container(OmegaConf.merge(schema, value))
        except Exception:  # a key the schema no longer knows: compare as written
            return value
    return value


def resolve_resume(resume: str, example: str) -> Tuple[Path, Path]:
    """``resume`` = a run folder (its checkpoints/last.ckpt) or a checkpoint in one -> (run_dir, ckpt).

    A checkpoint must sit in ``<run>/checkpoints/`` of a ggl run folder (one with ``config.yaml``):
    otherwise the folder two levels up is someone else's, and resuming would write into it.
    """
    path = Path(resume)
    if path.is_dir():
        run_dir, ckpt = path.resolve(), path.resolve() / "checkpoints" / "last.ckpt"
    else:
        ckpt = path.resolve()
        run_dir = ckpt.parent.parent
    if not ckpt.is_file():
        raise UserError(f"config key 'resume' = {resume!r}: no checkpoint at '{ckpt}' (give a run folder "
                        f"such as {example}, or a .ckpt file)")
    if ckpt.parent.name != "checkpoints" or not (run_dir / "config.yaml").is_file():
        raise UserError(f"config key 'resume' = {resume!r}: '{ckpt}' is not in the checkpoints/ folder of a "
                        f"ggl run folder (one with config.yaml); resume only runs ggl made, such as {example}")
    return run_dir, ckpt


def check_same_experiment(run_dir: Path, config: dict, section: str, resumable: Iterable[str]) -> None:
    """Only ``section.<resumable>`` keys (how far to go) and keys outside the experiment may differ."""
    saved_file = run_dir / "config.yaml"
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    except Exception as exc:  # a hand-edited or truncated YAML file: name it
        raise UserError(f"resume: cannot read the run's {saved_file} ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(saved, dict):
        raise UserError(f"resume: the run's {saved_file} is not a config mapping")
    task = _SECTION_TASK.get(section, config.get("task"))
    mine, theirs = experiment(config, task), experiment(saved, task)
    resumable = set(resumable)
    diffs = [k for k in mine if k != section and theirs.get(k) != mine[k]]
    mine_s, theirs_s = mine.get(section) or {}, theirs.get(section) or {}
    diffs += [f"{section}.{k}" for k in sorted(set(mine_s) | set(theirs_s)) if k not in resumable
              and theirs_s.get(k) != mine_s.get(k)]
    if diffs:
        allowed = ", ".join(f"{section}.{k}" for k in sorted(resumable))
        raise UserError(f"resume: {', '.join(diffs)} differ from the run's {saved_file}; a resumed run may "
                        f"only change {allowed}, devices and logging (start a new run instead)")


def read_checkpoint(ckpt: Path) -> Dict[str, Any]:
    """The checkpoint, through the safe loader: a truncated or crafted file is a one-line error here."""
    blob = safe_load(ckpt, "checkpoint")
    if not isinstance(blob, dict) or "state_dict" not in blob or "epoch" not in blob:
        raise UserError(f"checkpoint '{ckpt}' is not a Lightning checkpoint (no state_dict/epoch); give the "
                        f"run folder or its checkpoints/last.ckpt")
    return blob


@dataclass
class RunFolder:
    path: Path
    ckpt: Optional[Path] = None      # the checkpoint to resume from
    fresh: bool = False              # created by this job (removed again if its set-up fails)
    rank_zero: bool = True
    checkpoint: Dict[str, Any] = field(default_factory=dict)  # the resume checkpoint, safely loaded
    lock: Optional[RunLock] = None
    committed: bool = False

    def commit(self) -> None:
        """Set-up succeeded: a fresh folder becomes ``latest``."""
        if self.fresh and self.rank_zero:
            point_latest(self.path)
        self.committed = True

    def abandon(self) -> None:
        """Set-up failed: remove a fresh folder (``latest`` was never moved) and unlock."""
        self.release()
        if self.fresh and self.rank_zero:
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_run(resume: Optional[str], output_dir: str, name: str, config: dict, section: str,
             resumable: Iterable[str], example: str, rank_zero: bool = True) -> RunFolder:
    """The job's run folder; on ranks other than 0 its path is rank 0's only once shared (see ShareRunDir)."""
    check_run_name(name)
    if not resume:
        if not rank_zero:  # the real folder arrives by broadcast from rank 0 when the Trainer starts
            return RunFolder(Path(output_dir) / name / "rank0-folder-pending", rank_zero=False)
        run = RunFolder(create_run_dir(output_dir, name), fresh=True)
    else:
        run_dir, ckpt = resolve_resume(resume, example)
        check_same_experiment(run_dir, config, section, resumable)
        run = RunFolder(run_dir, ckpt, rank_zero=rank_zero, checkpoint=read_checkpoint(ckpt))
        if rank_zero:
            check_writable(run_dir)
    if rank_zero:
        try:
            run.lock = RunLock(run.path).acquire()
        except BaseException:
            run.abandon()
            raise
    return run


def open_run_dir(resume: str | None, output_dir: str, name: str, config: dict, section: str,
                 resumable: Iterable[str], example: str) -> Tuple[Path, Path | None]:
    """Compatibility: (run folder, checkpoint) for single-process jobs; ``latest`` moves at once."""
    if not resume:
        check_run_name(name)
        return new_run_dir(output_dir, name), None
    run_dir, ckpt = resolve_resume(resume, example)
    check_same_experiment(run_dir, config, section, resumable)
    read_checkpoint(ckpt)
    check_writable(run_dir)
    return run_dir, ckpt
