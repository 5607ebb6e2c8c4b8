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
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ggl.attack.schema import AttackConfig
from ggl.checks import in_range, one_of
from ggl.defenses.specs import check_chain, parse_defense
from ggl.errors import ConfigError
from ggl.gan.schema import GANConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# the repository's configs/ in a checkout; an installed wheel carries the same files as ggl/configs
# (pyproject.toml maps the package ggl.configs onto configs/)
CONFIG_DIR = REPO_ROOT / "configs"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SEED_MAX = 2**32 - 1       # numpy's legacy seeding and Lightning's seed_everything take [0, 2**32 - 1]
INT_MAX = 2**63 - 1        # every integer key must fit an int64 (torch, numpy)


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = "data"
    download: bool = False
    split_seed: int = 0
    public_fraction: float = 0.4
    test_fraction: float = 0.2
    limit: Optional[int] = None
    partition: str = "iid"
    num_clients: int = 10
    alpha: float = 0.5
    classes_per_client: int = 2

    def check(self) -> None:
        from ggl.data.sources import available_datasets

        one_of(self.name, tuple(available_datasets()), "data.name")
        check_seed(self.split_seed, "data.split_seed")
        in_range(self.public_fraction, 0.0, 0.9, "data.public_fraction")
        in_range(self.test_fraction, 0.0, 0.5, "data.test_fraction", lo_open=True)
        if self.public_fraction + self.test_fraction >= 0.95:
            raise ConfigError("config keys 'data.public_fraction' + 'data.test_fraction' must leave "
                              "at least 5% of the data for the clients' private split")
        if self.limit is not None and self.limit < 20:
            raise ConfigError(f"config key 'data.limit' = {self.limit} must be >= 20 (or null for all)")
        one_of(self.partition, ("iid", "dirichlet", "shards"), "data.partition")
        if self.num_clients < 1:
            raise ConfigError(f"config key 'data.num_clients' = {self.num_clients} must be >= 1")
        in_range(self.alpha, 0.0, 1e6, "data.alpha", lo_open=True)
        if self.classes_per_client < 1:
            raise ConfigError(f"config key 'data.classes_per_client' = {self.classes_per_client} must be >= 1")


@dataclass
class ModelConfig:
    name: str = "cnn"
    init: str = "default"
    checkpoint: Optional[str] = None

    def check(self) -> None:
        from ggl.models import check_model_name

        check_model_name(self.name, "model.name")  # a builtin name, or your own model as pkg.module:Class
        one_of(self.init, ("default", "dlg"), "model.init")


@dataclass
class FLConfig:
    rounds: int = 20
    clients_per_round: Optional[int] = None
    client_fraction: float = 1.0
    local_epochs: float = 2.0
    local_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    server_lr: float = 1.0
    eval_every: int = 5
    eval_batch_size: int = 1000
    simulate_failures: List[int] = field(default_factory=list)

    def check(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"config key 'fl.rounds' = {self.rounds} must be >= 1")
        in_range(self.client_fraction, 0.0, 1.0, "fl.client_fraction", lo_open=True)
        if self.clients_per_round is not None and self.clients_per_round < 1:
            raise ConfigError(f"config key 'fl.clients_per_round' = {self.clients_per_round} must be >= 1")
        if self.local_steps is None:
            in_range(self.local_epochs, 0.0, 1000.0, "fl.local_epochs", lo_open=True)
        elif self.local_steps < 1:
            raise ConfigError(f"config key 'fl.local_steps' = {self.local_steps} must be >= 1 (or null to use fl.local_epochs)")
        for key in ("batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'fl.{key}' = {getattr(self, key)} must be >= 1")
        in_range(self.lr, 0.0, 100.0, "fl.lr", lo_open=True)
        in_range(self.momentum, 0.0, 0.999, "fl.momentum")
        in_range(self.weight_decay, 0.0, 1.0, "fl.weight_decay")
        in_range(self.server_lr, 0.0, 100.0, "fl.server_lr", lo_open=True)


@dataclass
class AuditConfig:
    rounds: List[int] = field(default_factory=list)
    num_images: int = 8
    batch_size: int = 1
    victim_client: int = 0
    probe: Optional[str] = None  # null (today's capture) | fedsgd | local_update (see ggl/audit/victim.py)
    local_steps: Optional[int] = None  # steps of a local_update probe (null: its default)

    def check(self) -> None:
        from ggl.audit.victim import probe_of

        probe_of(self)
        if any(r < 0 for r in self.rounds):
            raise ConfigError(f"config key 'audit.rounds' = {list(self.rounds)} must hold round numbers >= 0")
        if self.num_images < 1 or self.batch_size < 1:
            raise ConfigError("config keys 'audit.num_images' and 'audit.batch_size' must be >= 1")
        if self.num_images % self.batch_size:
            raise ConfigError(f"config key 'audit.num_images' = {self.num_images} must be a multiple of "
                              f"'audit.batch_size' = {self.batch_size}")


@dataclass
class LoggerConfig:
    mode: str = "offline"
    project: str = "ggl"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def check(self) -> None:
        one_of(self.mode, ("offline", "online", "disabled"), "logger.mode")


@dataclass
class Config:
    task: str = "fedavg"
    name: Optional[str] = None
    seed: int = 0
    output_dir: str = "runs"
    resume: Optional[str] = None
    checkpoint_every: int = 1
    torch_threads: Optional[int] = None
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
        from ggl.trainer import check_trainer_args

        one_of(self.task, ("fedavg", "gan", "attack"), "task")
        check_seed(self.seed, "seed")
        check_trainer_args(self.trainer)
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"config key 'torch_threads' = {self.torch_threads} must be >= 1 (or null for "
                              f"torch's default)")
        if self.checkpoint_every < 1:
            raise ConfigError(f"config key 'checkpoint_every' = {self.checkpoint_every} must be >= 1")
        for section in (self.data, self.model, self.fl, self.audit, self.gan, self.attack, self.logger):
            section.check()


def check_seed(value: int, key: str) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"config key '{key}' = {_short(value)} must be in 0..{SEED_MAX} (2**32 - 1)")


def _short(value: Any) -> str:
    """A value for an error message: thousands of digits shortened to their count."""
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} characters)"


def _check_int_sizes(node: Any, prefix: str = "") -> None:
    """Every integer must fit an int64: a 1000-digit seed or round count is a typo, not a request."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        full = f"{prefix}.{key}" if isinstance(node, dict) and prefix else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
            raise ConfigError(f"config key '{full}' = {_short(value)} is too large (integers must fit in 64 bits)")
        _check_int_sizes(value, full)


# ----------------------------------------------------------------------------------------------
# loading


def config_dirs() -> List[Path]:
    """Where bare config names are looked up: the checkout's configs/, and the copy an installed wheel
    carries as ggl/configs (pyproject.toml ships configs/ as the package data ggl.configs)."""
    return [d for d in (CONFIG_DIR, PACKAGED_CONFIG_DIR) if d.is_dir()]


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
            raise ConfigError(f"override '{_short(item)}': '{key}' is not a config key (e.g. fl.rounds=50)")
        try:
            value = OmegaConf.from_dotlist([f"v={raw}"])["v"]
        except (OmegaConfBaseException, ValueError) as exc:  # ValueError: an int of > 4300 digits
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "Exceeds the limit" in first:
                raise ConfigError(f"config key '{key}' = {_short(raw)} is too large (integers must fit in "
                                  f"64 bits)") from None
            raise ConfigError(f"override '{_short(item)}' could not be parsed: {first}") from None
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
    hint = (f"; to attack a federation's audit captures: python attack.py source=runs/{source.stem if source else '<name>'}/latest"
            if script == "attack.py" and task == "fedavg" else "")
    raise ConfigError(f"config '{name}' has task: {task}, a job for {TASK_SCRIPTS[task]}, not {script}; run "
                      f"python {TASK_SCRIPTS[task]} --config {name}, or give {script} one of: {own}{hint}")


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
    cfg.defenses = [parse_defense(d, f"defenses[{i}]") for i, d in enumerate(cfg.defenses)]
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
