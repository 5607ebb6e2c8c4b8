"""``logger:`` and what every job writes beside its run folder: the W&B logger (offline by default),
strict ``results.json`` files, and a stopwatch."""
from __future__ import annotations

import json
import math
import os
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional

from lightning.fabric.utilities.rank_zero import rank_zero_only

from ggl.core.atomic import atomic_write_text
from ggl.core.checks import one_of


@dataclass
class LoggerConfig:
    mode: str = "offline"
    project: str = "ggl"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def check(self) -> None:
        one_of(self.mode, ("offline", "online", "disabled"), "logger.mode")


def is_rank_zero() -> bool:
    """Lightning's own process rank (RANK, LOCAL_RANK, SLURM_PROCID, ...; set from the Trainer once built)."""
    return rank_zero_only.rank == 0


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
