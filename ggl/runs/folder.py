"""Run folders, results.json and the W&B logger: the one results format every job writes.

Every run writes ``<output_dir>/<name>/<timestamp>/`` (``config.yaml``, ``results.json``, artefacts)
and points ``<output_dir>/<name>/latest`` at it once its set-up succeeded. Nothing is ever overwritten:
two runs started in the same second get distinct folders. Only rank 0 creates a folder.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import string
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

from lightning.fabric.utilities.rank_zero import rank_zero_only

from ggl.core.atomic import atomic_write_text, fsync_dir
from ggl.core.errors import UserError


def is_rank_zero() -> bool:
    """Lightning's own process rank (RANK, LOCAL_RANK, SLURM_PROCID, ...; set from the Trainer once built)."""
    return rank_zero_only.rank == 0


def check_writable(folder: Path) -> None:
    """Fail before training, not after an hour, when results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 65536)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write run results to '{folder}' ({exc.strerror or exc}); "
                        f"free some space or set output_dir=<writable folder>") from None


def check_run_name(name: str) -> None:
    """A run name is one folder name: no separators, no '..', not absolute (it must stay in output_dir)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
            or Path(name).is_absolute() or "\0" in name):
        raise UserError(f"config key 'name' = {name!r} must be a plain folder name (no '/', '..' or absolute "
                        f"path): runs are written to output_dir/<name>/; set output_dir to choose the place")


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create ``output_dir/name/<timestamp>`` (unique); ``latest`` is not moved (see ``point_latest``)."""
    check_run_name(name)
    parent = Path(output_dir) / name
    check_writable(parent)
    check_latest(parent)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = parent / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise UserError(f"could not create a fresh run folder under '{parent}'")  # pragma: no cover


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create a fresh run folder and point ``latest`` at it at once (jobs with no set-up to fail)."""
    run_dir = create_run_dir(output_dir, name)
    point_latest(run_dir)
    return run_dir


def check_latest(parent: Path) -> None:
    """``latest`` must be ggl's symlink (or absent): never replace a user's file or folder of that name."""
    link = parent / "latest"
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        raise UserError(f"'{link}' is a real file or folder, not the run link ggl maintains; move it away")


def point_latest(run_dir: Path) -> None:
    check_latest(run_dir.parent)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    try:
        os.replace(tmp, link)  # atomic: readers see the old or the new target, never none
    except OSError as exc:
        tmp.unlink()
        raise UserError(f"cannot point '{link}' at the new run ({exc.strerror or exc})") from None
    fsync_dir(run_dir.parent)


class RunLock:
    """An exclusive ``fcntl`` lock on a run folder for as long as a job runs in it.

    Two processes resuming one run would interleave checkpoints and share a W&B id; the second is
    refused. The lock dies with its process (kill -9 included), so a stale one never blocks a resume.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock run folder '{self.path.parent}' ({exc.strerror or exc}); "
                            f"is it writable?") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise UserError(f"run folder '{self.path.parent}' is in use by another ggl process (a second "
                            f"resume of the same run?); wait for it to end or stop it") from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def strict_json(obj: Any, where: str = "", found: Optional[dict] = None) -> Any:
    """``obj`` with every non-finite float replaced by None; ``found`` collects where and what it was."""
    if isinstance(obj, float) or (hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0):
        value = obj.item() if hasattr(obj, "item") else obj
        if isinstance(value, float) and not math.isfinite(value):
            if found is not None:
                found[where or "."] = repr(value)
            return None
        return value
    if isinstance(obj, dict):
        return {k: strict_json(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (no NaN/Infinity tokens), written atomically.

    A non-finite number becomes null, and ``non_finite_values`` lists where and what it was, so a
    reader knows the null is a NaN (e.g. a diverged federation's loss), not a missing value.
    """
    found: dict = {}
    clean = strict_json(obj, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite_values"] = {**clean.get("non_finite_values", {}), **found}
    text = json.dumps(clean, indent=2, default=_json_default, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def _json_default(o):
    if hasattr(o, "tolist"):  # tensors and arrays; non-finite entries become null
        return strict_json(o.tolist())
    return str(o)


def make_logger(logger_cfg, run_dir: Path, name: str, group: str, tags: Iterable[str], config: dict,
                job_type: str, run_id: Optional[str] = None):
    """Lightning's WandbLogger, offline unless ``logger.mode=online``; ``None`` when disabled.

    The run id is kept in ``run_dir/wandb_id.txt`` so a resumed run appends to the same W&B run.
    """
    if logger_cfg.mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    id_file = Path(run_dir) / "wandb_id.txt"
    if run_id is None and id_file.is_file():
        run_id = id_file.read_text().strip()
    if run_id is None:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if is_rank_zero():
            id_file.write_text(run_id + "\n")
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        name=name, project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group or group,
        tags=sorted(set(tags) | set(logger_cfg.tags)), save_dir=str(run_dir), offline=logger_cfg.mode == "offline",
        id=run_id, resume="allow", config=config, job_type=job_type,
    )


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
