"""The sweep file: W&B Sweeps grid syntax (``method: grid``; ``parameters`` with ``value:``/``values:``),
its parameter names, and its ``key=value`` grammar (the job configs' override grammar, after the
``ast.literal_eval`` pass that ``wandb agent``'s Python reprs need)."""
from __future__ import annotations

import ast
import difflib
import itertools
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from omegaconf import OmegaConf

from ggl.config import _parse_overrides, config_dirs
from ggl.core.errors import ConfigError, UserError

SHARED_KEYS = ("seed", "output_dir", "plugins")  # parameters given to both jobs as they are
SHARED_PREFIXES = ("logger.",)
SWEEP_KEYS = ("defenses", "fed_config", "attack_config", "attackers", "torch_threads", "workers",
              "search_seeds_by_attacker")
W_AND_B_TOP_KEYS = {"apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
                    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
                    "early_terminate", "parameters"}


def value_text(v: Any) -> str:
    """A parameter value as a ``key=value`` override text (strings as written; the rest as YAML/JSON)."""
    return v if isinstance(v, str) else json.dumps(v)


def parse_arg_value(raw: str) -> Any:
    """A value from ``key=value`` (W&B writes Python literals: ``[{'name': 'sign'}]``, ``True``, ``None``)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:  # YAML a user typed: [0], true, {name: sign}; parsed as a job config's override value
        node = OmegaConf.create({"v": _parse_overrides([f"v={raw}"])[0][1]})
        return OmegaConf.to_container(node)["v"]
    except Exception:
        return raw


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"sweep argument '{item}' must look like key=value (e.g. fed.fl.rounds=5)")
        key, raw = item.split("=", 1)
        out[key.strip()] = parse_arg_value(raw)
    return out


def check_parameter_name(key: str, where: str) -> None:
    if key in SWEEP_KEYS or key in SHARED_KEYS or key.startswith(SHARED_PREFIXES) \
            or key.startswith("fed.") or key.startswith("attack."):
        return
    near = difflib.get_close_matches(key, list(SWEEP_KEYS + SHARED_KEYS), n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'?" if near else \
        "use fed.<key> (federation), attack.<key> (attack), seed, output_dir, logger.<key>, " + ", ".join(SWEEP_KEYS)
    raise ConfigError(f"{where}: unknown sweep parameter '{key}'; {hint}")


def resolve_sweep_path(path: str | Path) -> Path:
    """A path as given, else a bare name (``sweep_tiny.yaml``, ``.yaml`` may be left off) looked up like a
    config: the checkout's configs/, then the installed package's copy (``ggl.config.config_dirs``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and len(p.parts) == 1:
        names = [p.name] + ([] if p.suffix in (".yaml", ".yml") else [p.name + ".yaml"])
        for found in (d / n for d in config_dirs() for n in names):
            if found.is_file():
                return found
    where = ", ".join(str(d) for d in config_dirs())
    raise UserError(f"sweep file '{path}' not found (looked in . and {where}; e.g. sweep_defenses.yaml)")


def load_sweep(path: str | Path) -> Tuple[dict, Dict[str, List[Any]]]:
    """(the file as read, {parameter: [values]}) after checking it is a W&B grid sweep we can run."""
    import yaml

    p = resolve_sweep_path(path)
    try:
        doc = yaml.safe_load(p.read_text())  # the parser `wandb sweep` uses
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"sweep file '{path}' must hold a mapping (a W&B sweep config)")
    extra = sorted(set(doc) - W_AND_B_TOP_KEYS)
    if extra:
        raise ConfigError(f"sweep file '{path}': top-level key '{extra[0]}' is not W&B sweep syntax "
                          f"(allowed: {', '.join(sorted(W_AND_B_TOP_KEYS))}); put settings under 'parameters'")
    if doc.get("method") != "grid":
        raise ConfigError(f"sweep file '{path}': 'method' must be grid (every setting once), not {doc.get('method')!r}")
    params = doc.get("parameters")
    if not isinstance(params, dict) or "defenses" not in params:
        raise ConfigError(f"sweep file '{path}' needs 'parameters' with a 'defenses' entry (the settings)")
    grid: Dict[str, List[Any]] = {}
    for key, spec in params.items():
        where = f"sweep file '{path}', parameters.{key}"
        check_parameter_name(key, f"sweep file '{path}'")
        if not isinstance(spec, dict) or len(set(spec) & {"value", "values"}) != 1 or set(spec) - {"value", "values"}:
            raise ConfigError(f"{where} must have exactly one of 'value:' (a constant) or 'values:' (a grid axis)")
        if "values" in spec:
            if not isinstance(spec["values"], list) or not spec["values"]:
                raise ConfigError(f"{where}.values must be a non-empty list")
            grid[key] = list(spec["values"])
        else:
            grid[key] = [spec["value"]]
    return doc, grid


def expand(grid: Dict[str, List[Any]]) -> List[Dict[str, Any]]:
    """Every combination of the grid's values (in file order), as {parameter: value}."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def job_overrides(params: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """A grid point's parameters as the federation's and the attack's ``key=value`` overrides."""
    fed, attack = [], []
    for key, value in params.items():
        if key in SWEEP_KEYS:
            continue
        if key in SHARED_KEYS or key.startswith(SHARED_PREFIXES):
            fed.append(f"{key}={value_text(value)}")
            attack.append(f"{key}={value_text(value)}")
        elif key.startswith("fed."):
            fed.append(f"{key[4:]}={value_text(value)}")
        elif key.startswith("attack."):
            attack.append(f"{key}={value_text(value)}")
    return fed, attack
