"""``logger:`` and what every job writes beside its run folder: the W&B logger (offline by default),
strict ``results.json`` files, and a stopwatch.

W&B settings: a ``logger.*`` key the user set wins; a null one takes WANDB_MODE / WANDB_PROJECT /
WANDB_ENTITY, then ggl's defaults (offline, "ggl"). ``resolve_logger`` settles them before any run
folder exists: online without an API key or without a reachable server falls back to offline, with
one line saying so, never a hang or a traceback."""
from __future__ import annotations

import json
import math
import os
import secrets
import socket
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional

from lightning.fabric.utilities.rank_zero import rank_zero_only

from ggl.core.atomic import atomic_write_text
from ggl.core.checks import one_of
from ggl.core.errors import ConfigError

MODES = ("offline", "online", "disabled")
_ENV_MODES = {"dryrun": "offline", "run": "online"}  # W&B's older spellings of WANDB_MODE
_REFUSED = "/\\#?%:"  # characters W&B refuses in project (and entity) names
DEFAULT_PROJECT = "ggl"
GROUP_FILE = "wandb_group.txt"  # beside wandb_id.txt: the W&B group the attacks on this run join
INIT_TIMEOUT_S = 30  # online wandb.init gives up after this (W&B's own default is 90 s)


def check_wandb_name(value: Any, key: str, limit: int = 128, refused: str = _REFUSED) -> None:
    """A W&B project/entity/group/tag name: a non-empty string of at most ``limit`` characters."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"config key '{key}' = {value!r} must be a non-empty string")
    if len(value) > limit:
        raise ConfigError(f"config key '{key}' = {value[:20]!r}... is {len(value)} characters; W&B takes at most {limit}")
    bad = sorted(set(value) & set(refused))
    if bad:
        raise ConfigError(f"config key '{key}' = {value!r} holds {' '.join(bad)}, which W&B refuses in names "
                          f"(none of {' '.join(refused)})")


@dataclass
class LoggerConfig:
    mode: Optional[str] = None      # null: WANDB_MODE, else offline
    project: Optional[str] = None   # null: WANDB_PROJECT, else "ggl"
    entity: Optional[str] = None    # null: WANDB_ENTITY, else the account's default
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def check(self) -> None:
        if self.mode is not None:
            one_of(self.mode, MODES, "logger.mode")
        check_wandb_name(self.project, "logger.project")
        check_wandb_name(self.entity, "logger.entity")
        check_wandb_name(self.group, "logger.group", refused="")
        if not isinstance(self.tags, (list, tuple)):
            raise ConfigError(f"config key 'logger.tags' = {self.tags!r} must be a list of strings")
        for i, tag in enumerate(self.tags):
            check_wandb_name(tag, f"logger.tags[{i}]", limit=64, refused="")


@dataclass(frozen=True)
class Tracking:
    """The W&B settings a job runs with (``resolve_logger``): config, then environment, then defaults."""
    mode: str
    project: str
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: tuple = ()

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def init_kwargs(self) -> dict:
        """``wandb.init`` arguments every ggl run shares (an online init times out in INIT_TIMEOUT_S)."""
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        settings = wandb.Settings(init_timeout=INIT_TIMEOUT_S) if self.mode == "online" else None
        return {"project": self.project, "entity": self.entity, "mode": self.mode, "settings": settings}


def _env_mode() -> Optional[str]:
    raw = os.environ.get("WANDB_MODE", "").strip().lower()
    if not raw:
        return None
    mode = _ENV_MODES.get(raw, raw)
    if mode not in MODES:
        raise ConfigError(f"environment variable WANDB_MODE = {raw!r} is not one of {', '.join(MODES)}")
    return mode


def _has_api_key() -> bool:
    """A W&B API key is configured (env, .netrc, settings): looked up locally, never prompted for."""
    import inspect

    import wandb

    if os.environ.get("WANDB_API_KEY", "").strip():  # wandb's own settings may predate the variable
        return True
    if "prompt" in inspect.signature(wandb.login).parameters:
        return bool(wandb.login(prompt=False, verify=False))
    return getattr(wandb.api, "api_key", None) is not None  # older wandb: no prompt= on login


def online_blocker(timeout: float = 3.0) -> Optional[str]:
    """Why an online W&B run cannot start here (no API key, server unreachable), or None. No request is sent:
    the key is looked up locally and the server's port is only connected to."""
    from urllib.parse import urlparse

    if not _has_api_key():
        return "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot reach the W&B server {host}:{port} ({exc.strerror or exc})"
    return None


def resolve_logger(cfg: "LoggerConfig", say: bool = True) -> Tracking:
    """The job's W&B settings; call it before the run folder exists (an error leaves nothing behind)."""
    mode = cfg.mode or _env_mode() or "offline"
    project = cfg.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    entity = cfg.entity or os.environ.get("WANDB_ENTITY") or None
    check_wandb_name(project, "logger.project (or WANDB_PROJECT)")
    check_wandb_name(entity, "logger.entity (or WANDB_ENTITY)")
    if mode == "online":
        why = online_blocker()
        if why is not None:
            if say:
                print(f"W&B: {why}; logging offline instead (upload later with `wandb sync`)", file=sys.stderr)
            mode = "offline"
    return Tracking(mode, project, entity, cfg.group, tuple(cfg.tags))


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


def tag(kind: str, value: Any) -> str:
    """A ``kind:value`` tag (W&B keeps tags to 64 characters)."""
    return f"{kind}:{value}"[:64]


def make_logger(tracking: Tracking, run_dir: Path, name: str, group: str, tags: Iterable[str], config: dict,
                job_type: str, run_id: Optional[str] = None):
    """Lightning's WandbLogger with ``tracking``'s settings (``resolve_logger``); ``None`` when disabled.

    The run id is kept in ``run_dir/wandb_id.txt`` so a resumed run appends to the same W&B run, and the
    group in ``run_dir/wandb_group.txt`` so the attacks on this run's captures join it.
    """
    if not tracking.enabled:
        return None
    from lightning.pytorch.loggers import WandbLogger

    id_file = Path(run_dir) / "wandb_id.txt"
    if run_id is None and id_file.is_file():
        run_id = id_file.read_text().strip()
    if run_id is None:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if is_rank_zero():
            id_file.write_text(run_id + "\n")
    group = tracking.group or group
    if is_rank_zero():
        (Path(run_dir) / GROUP_FILE).write_text(group + "\n")
    kw = tracking.init_kwargs()
    logger = WandbLogger(  # mode= rather than offline=True, which would set WANDB_MODE for the whole process
        name=name, project=kw["project"], entity=kw["entity"], group=group, mode=kw["mode"],
        tags=sorted(set(tags) | set(tracking.tags)), save_dir=str(run_dir),
        id=run_id, resume="allow", config=config, job_type=job_type, settings=kw["settings"],
    )
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)  # Lightning passes None; wandb>=0.2x warns on it
    return logger



class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
