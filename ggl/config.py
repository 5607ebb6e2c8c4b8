"""One config system for every job: an OmegaConf schema of dataclasses, YAML files, CLI overrides.

Loading order (later wins): schema defaults <- ``base:`` chain of YAML files <- the YAML file <-
``key=value`` overrides from the command line. Every key a user writes is checked against the schema
(a typo is an error that names the key and suggests the nearest valid one), every value is
type-checked by OmegaConf and range-checked by the section's ``check()``.

The documented meaning of every key lives in the YAML files under ``configs/`` (``_fed_base.yaml``
for the federation, ``gan_mnist.yaml`` for the GAN, ``attack.yaml`` for the attack).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ggl.attack.schema import AttackConfig
from ggl.audit.schema import AuditConfig
from ggl.core.checks import INT_MAX, at_least, check_seed, count, one_of, short
from ggl.core.errors import ConfigError
from ggl.core.plugins import load_plugins
from ggl.core.shipped import REPO_ROOT, command, shipped_candidates
from ggl.data.schema import DataConfig
from ggl.defenses import check_chain, parse_chain, parse_defense, to_dicts
from ggl.fl.schema import FLConfig
from ggl.gan.schema import GANConfig
from ggl.models.schema import ModelConfig
from ggl.runs.logger import LoggerConfig
from ggl.runs.trainer import check_trainer_args

CONFIG_DIR = REPO_ROOT / "configs"  # the checkout's configs/ (a wheel carries them as ggl/configs: core.shipped)


@dataclass
class Config:
    task: str = "fedavg"
    name: Optional[str] = None
    seed: int = 0
    output_dir: str = "runs"
    resume: Optional[str] = None
    checkpoint_every: int = 1
    torch_threads: Optional[int] = None
    plugins: List[str] = field(default_factory=list)  # modules to import: user defences / attackers
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    defenses: List[Any] = field(default_factory=list)
    audit: AuditConfig = field(default_factory=AuditConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: Dict[str, Any] = field(default_factory=lambda: {"accelerator": "auto", "devices": 1})

    def check(self) -> None:
        one_of(self.task, ("fedavg", "gan", "attack"), "task")
        check_seed(self.seed, "seed")
        check_trainer_args(self.trainer)
        count(self.torch_threads, "torch_threads", hint=" (or null for torch's default)")
        at_least(self.checkpoint_every, 1, "checkpoint_every")
        for section in (self.data, self.model, self.fl, self.audit, self.gan, self.attack, self.logger):
            section.check()


def _check_int_sizes(node: Any, prefix: str = "") -> None:
    """Every integer must fit an int64: a 1000-digit seed or round count is a typo, not a request."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        full = f"{prefix}.{key}" if isinstance(node, dict) and prefix else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
            raise ConfigError(f"config key '{full}' = {short(value)} is too large (integers must fit in 64 bits)")
        _check_int_sizes(value, full)


# ----------------------------------------------------------------------------------------------
# loading


def config_dirs() -> List[Path]:
    """Where bare config names are looked up: the checkout's configs/, then the installed package's copy
    (``ggl.core.shipped``, the one place that knows both)."""
    return [d for d in shipped_candidates("configs") if d.is_dir()]


def available_configs(task: str | None = None) -> List[str]:
    """Config names users can pass to ``--config`` (``_base`` files left out), of one task if given."""
    names = sorted({p.name for d in config_dirs() for p in d.glob("*.yaml") if not p.name.startswith("_")})
    if task is None:
        return names
    return [n for n in names if config_task(resolve_config_path(n)) == task]


def config_task(path: Path) -> str | None:
    """The job a config file is for (its ``task:``, through its ``base:`` chain; the schema default
    ``fedavg`` when unset); None for a file that is not a job config (a sweep file)."""
    try:
        node = _read_yaml(path)
    except ConfigError:
        return None
    if any(str(k) not in Config.__dataclass_fields__ for k in node):  # a sweep file (ggl.sweep), not a job
        return None
    return str(node.get("task", Config.task))


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, else a bare name looked up in ``configs/`` (``.yaml`` may be left off)."""
    if str(name).strip() == "":
        raise ConfigError("--config is empty; give a YAML file, e.g. --config fed_q4.yaml")
    given = Path(name).expanduser()
    candidates = [given]
    if not given.is_absolute() and len(given.parts) == 1:
        candidates += [d / given for d in config_dirs()]
    for c in list(candidates):
        if c.suffix not in (".yaml", ".yml"):
            candidates.append(c.with_name(c.name + ".yaml"))
    for c in candidates:
        if c.is_file():
            return c.resolve()
    if given.is_dir():
        inside = sorted(p.name for p in given.glob("*.y*ml"))[:5]
        raise ConfigError(f"--config '{name}' is a folder; give one YAML file"
                          + (f" in it ({', '.join(inside)})" if inside else " (it holds none)"))
    available = available_configs()
    hint = difflib.get_close_matches(str(name), available, n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; available: {', '.join(available)}"
    where = ", ".join(str(d) for d in config_dirs())
    raise ConfigError(f"config file '{name}' not found (looked in . and {where}){suggestion}")


def _read_yaml(path: Path, seen: tuple = ()) -> DictConfig:
    """Read a YAML file and the ``base:`` files it names (relative to itself), base first."""
    if path in seen:
        raise ConfigError(f"config file '{path}' includes itself through 'base:'")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError, OSError, UnicodeDecodeError, int over 4300 digits
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Exceeds the limit" in first:
            first = "it holds an integer of thousands of digits (integers must fit in 64 bits)"
        raise ConfigError(f"config file '{path}' could not be read: {first}") from None
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        raise ConfigError(f"config file '{path}' is empty; start it with 'base: _fed_base.yaml' (a federation) "
                          f"or copy a config from configs/")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not a {type(node).__name__}")
    base = node.pop("base", None)
    if base is None:
        return node
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file '{path}': 'base' = {base!r} must be the file name of another config")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        raise ConfigError(f"config file '{path}': base '{base}' not found (looked for {base_path})")
    return OmegaConf.merge(_read_yaml(base_path.resolve(), seen + (path,)), node)


def _check_keys(user: Any, schema: Any, prefix: str = "") -> None:
    """Name the first key the user wrote that the schema does not know, with the nearest valid one."""
    if not isinstance(user, DictConfig) or not isinstance(schema, DictConfig):
        return
    if OmegaConf.get_type(schema) is dict:  # free-form sections (trainer) take any key
        return
    for key in user.keys():
        full = f"{prefix}{key}"
        if key not in schema:
            valid = [str(k) for k in schema.keys()]
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            where = f"section '{prefix[:-1]}'" if prefix else "the top level"
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{full}' in {where}; {hint}")
        _check_keys(user._get_node(key), schema._get_node(key), full + ".")


def _parse_overrides(overrides: List[str]) -> List[tuple]:
    """``key=value`` strings -> (key, typed value); values parse as in YAML (``[1, 2]``, ``null``...)."""
    pairs = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' must look like key=value (e.g. fl.rounds=50)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{short(item)}': '{key}' is not a config key (e.g. fl.rounds=50)")
        try:
            value = OmegaConf.from_dotlist([f"v={raw}"])["v"]
        except (OmegaConfBaseException, ValueError) as exc:  # ValueError: an int of > 4300 digits
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Exceeds the limit" in first:
                raise ConfigError(f"config key '{key}' = {short(raw)} is too large (integers must fit in "
                                  f"64 bits)") from None
            raise ConfigError(f"override '{short(item)}' could not be parsed: {first}") from None
        pairs.append((key, value))
    return pairs


def _check_path(cfg: DictConfig, key: str) -> None:
    """An override's dotted key must exist in the schema (free-form sections take any key)."""
    node: Any = cfg
    walked = ""
    for part in key.split("."):
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"config key '{walked}{part}': '{walked[:-1]}' has {len(node)} entries "
                                  f"(indices 0..{len(node) - 1})")
            node = node._get_node(int(part))
        elif isinstance(node, DictConfig):
            if OmegaConf.get_type(node) is dict:  # trainer, defence entries: checked elsewhere
                return
            _check_keys(OmegaConf.create({part: None}), node, walked)
            node = node._get_node(part)
        else:
            raise ConfigError(f"config key '{key}': '{walked[:-1]}' is a value, not a section")
        walked += part + "."


# which script runs which task
TASK_SCRIPTS = {"fedavg": "train.py", "gan": "train.py", "attack": "attack.py"}


def _check_task(task: str, tasks: tuple, source: Path | None) -> None:
    """A job given another job's config (``attack.py --config fed_q4.yaml``) is an error, not a run."""
    if task in tasks or task not in TASK_SCRIPTS:  # an unknown task is Config.check()'s to report
        return
    script = TASK_SCRIPTS[tasks[0]]
    name = source.name if source is not None else "<config>"
    if source is None or config_task(source) in tasks:  # the file is right; an override changed the task
        raise ConfigError(f"config key 'task' = {task!r}: {script} runs {' or '.join(tasks)}; "
                          f"{TASK_SCRIPTS[task]} runs {task}")
    own = ", ".join(n for n in available_configs() if config_task(resolve_config_path(n)) in tasks)
    hint = (f"; to attack a federation's audit captures: {command('attack')} source=runs/"
            f"{source.stem if source else '<name>'}/latest" if script == "attack.py" and task == "fedavg" else "")
    raise ConfigError(f"config '{name}' has task: {task}, a job for {TASK_SCRIPTS[task]}, not {script}; run "
                      f"{command(TASK_SCRIPTS[task][:-3])} --config {name}, or give {script} one of: {own}{hint}")


def load_config(path: str | Path | None = None, overrides: List[str] | None = None,
                default: str | None = None, tasks: tuple | None = None) -> Config:
    """Load, merge, check. ``path=None`` uses ``default`` (a name in ``configs/``) if given.

    ``tasks``: the tasks the calling script runs (train.py: fedavg, gan); another job's config is an error.
    """
    schema = OmegaConf.structured(Config)
    chosen = path if path is not None else default
    source = resolve_config_path(chosen) if chosen is not None else None
    pairs = _parse_overrides(overrides or [])
    try:
        merged = schema
        if source is not None:
            layer = _read_yaml(source)
            _check_keys(layer, schema)
            merged = OmegaConf.merge(schema, layer)
        for key, value in pairs:
            _check_path(merged, key)
            OmegaConf.update(merged, key, value, merge=True)
        _check_int_sizes(OmegaConf.to_container(merged, resolve=False))
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key '{key}': {msg}") from None
    if tasks:
        _check_task(cfg.task, tasks, source)
    load_plugins(cfg.plugins)  # before any name is looked up: a plugin registers defences / attackers
    cfg.defenses = parse_chain(cfg.defenses)
    check_chain(cfg.defenses)
    cfg.check()
    cfg._source = str(source) if source else None  # type: ignore[attr-defined]
    return cfg


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(to_container(cfg))


def to_container(cfg: Config) -> dict:
    """Plain dict of the resolved config (defence specs included), for logs and results.json."""
    node = OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True)


# ----------------------------------------------------------------------------------------------
# the experiment: what a run's results depend on (resume and the sweep's done detection compare it)


# the top-level keys that define each job's experiment; everything else (logging, devices, where the
# run is written, other jobs' sections such as gan.* in a federation's config) may change on resume
EXPERIMENT_KEYS: Dict[str, Tuple[str, ...]] = {
    "fedavg": ("task", "seed", "data", "model", "fl", "defenses", "audit"),
    "gan": ("task", "seed", "data", "gan"),
    "attack": ("task", "seed", "data", "model", "attack"),
}




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
        def chain(entries):
            try:
                return to_dicts([parse_defense(dict(e), key) for e in entries])
            except Exception:  # not parseable any more: compare as written
                return entries
        if key == "defenses":
            return chain(value)
        if isinstance(value, dict) and isinstance(value.get("defenses"), list):
            value = {**value, "defenses": [chain(c) if isinstance(c, list) else c for c in value["defenses"]]}
    if isinstance(value, dict) and key in ("data", "model", "fl", "audit", "gan"):
        try:
            schema = OmegaConf.structured(getattr(Config(), key))
            return OmegaConf.to_container(OmegaConf.merge(schema, value))
        except Exception:  # a key the schema no longer knows: compare as written
            return value
    return value
