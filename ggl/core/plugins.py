"""User plugins: modules named explicitly, never found by listing a folder.

Two ways to name one: the config's top-level ``plugins:`` (dotted module names on ``sys.path``) and the
Python entry-point groups ``ggl.defenses`` / ``ggl.attackers`` of an installed package. Importing the
module registers what it defines (``@register``). A plugin that fails to import (a syntax error, an
ImportError, any exception at import) is one ``UserError`` line naming its file and line; a plugin that
registers a taken name raises the registry's one-line ``ConfigError`` as it is.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import traceback
from typing import Iterable, List, Optional, Set

from ggl.core.errors import ConfigError, UserError

ENTRY_POINT_GROUPS = ("ggl.defenses", "ggl.attackers")
_loaded: Set[str] = set()  # what this process imported already (a module once, an entry point once)


def _where(exc: BaseException, hint: Optional[str]) -> str:
    """'file, line N' of a failed import: the syntax error's own place, else the deepest frame in the
    plugin's file (``hint``), else the deepest frame outside the import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    mine = [f for f in frames if hint and f.filename == hint]
    last = (mine or frames or [None])[-1]
    return f"{last.filename}, line {last.lineno}" if last is not None else "?"


def _origin(name: str) -> Optional[str]:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a parent package that fails to import: reported by the import itself
        return None
    return spec.origin if spec is not None else None


def import_plugin(name: str, where: str) -> None:
    """Import module ``name`` (``where``: the config key or entry point naming it, for messages)."""
    if name in _loaded:
        return
    if not isinstance(name, str) or not name.strip() or any(not p.isidentifier() for p in name.split(".")):
        raise ConfigError(f"{where} = {name!r} is not a dotted module name (e.g. my_pkg.my_defense)")
    origin = _origin(name)
    try:
        importlib.import_module(name)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserError(f"{where} = '{name}': no module named '{exc.name}' (put the plugin's folder on "
                            f"PYTHONPATH, or install its package)") from None
        raise UserError(f"plugin '{name}' ({where}) failed to import at {_where(exc, origin)}: "
                        f"{type(exc).__name__}: {exc}") from None
    except (Exception, SystemExit) as exc:  # SyntaxError, ImportError, sys.exit(), anything its code raises
        msg = exc.msg if isinstance(exc, SyntaxError) else f"code {exc.code}" if isinstance(exc, SystemExit) else str(exc)
        raise UserError(f"plugin '{name}' ({where}) failed to import at {_where(exc, origin)}: "
                        f"{type(exc).__name__}: {msg.splitlines()[0] if msg else ''}") from None
    _loaded.add(name)


def entry_point_plugins(groups: Iterable[str] = ENTRY_POINT_GROUPS) -> List[str]:
    """Import every entry point of ``groups`` (each an importable module, or ``module:attr``)."""
    names = []
    for group in groups:
        for ep in importlib.metadata.entry_points(group=group):
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            import_plugin(ep.value.split(":")[0].strip(), f"entry point '{ep.name}' of group '{group}' "
                                                            f"(package {dist})")
            names.append(ep.value)
    return names


def load_plugins(names: Optional[Iterable[str]] = None, key: str = "plugins") -> None:
    """The installed entry points, then the modules of config key ``key`` (a list of dotted names)."""
    entry_point_plugins()
    if names is None:
        return
    if isinstance(names, str):
        raise ConfigError(f"config key '{key}' must be a list of module names, e.g. [{names}]")
    for i, name in enumerate(names):
        import_plugin(name, f"config key '{key}[{i}]'")
