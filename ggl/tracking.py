"""Run folders, results.json and the W&B logger: the one results format every job writes.

Every run writes ``<output_dir>/<name>/<timestamp>/`` (``config.yaml``, ``results.json``, artefacts)
and points ``<output_dir>/<name>/latest`` at it. Nothing is ever overwritten: two runs started in the
same second get distinct folders.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Optional

from ggl.errors import UserError

RUN_DIR_ENV = "GGL_RUN_DIR"  # set by rank 0 so that DDP worker processes join its run folder


def is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


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


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create ``output_dir/name/<timestamp>`` (unique) and point ``latest`` at it."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_rank_zero():  # a DDP worker joins the folder its rank 0 created
        return Path(inherited)
    parent = Path(output_dir) / name
    check_writable(parent)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = parent / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise UserError(f"could not create a fresh run folder under '{parent}'")
    point_latest(run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir


def point_latest(run_dir: Path) -> None:
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)  # atomic: readers see the old or the new target, never none


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
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
