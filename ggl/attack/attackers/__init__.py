"""The attacker portfolio: one attacker, one file, one registry (this module).

An attacker reconstructs the images behind one ``Observation`` from what the server sees (and the public
GAN prior, if it uses one); it never sees private data. Each declares ``loss`` (what it matches),
``search`` (how it searches), ``models`` (what of the defence it models: none | adaptive | eot) and
``uses_prior``. ``get_attacker(name, options)(obs, G, cfg.attack, seed)`` runs one (a ``SearchResult``);
``run_portfolio(build_portfolio(names, options), obs, G, cfg.attack, seed)`` runs several.

Adding one = a file with an ``Attacker`` subclass decorated ``@register("name")``, named as a
plugin (the config's ``plugins:`` or an entry point ``ggl.attackers``; only ``SHIPPED`` loads from this
folder): docs/extending.md, "Add your own attacker". ``register(..., order=, compare_with=)`` places it in the report.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ggl.core.errors import ConfigError
from ggl.core.registry import Registry

# name -> (attacker class, fixed constructor arguments that make this entry what its name says)
_REGISTRY: Registry[Tuple[type, Dict[str, Any]]] = Registry("attacker", owner=lambda entry: entry[0])


# name -> (its place in the report's tables or None, the attackers it adds to); see ``register``
_REPORTING: Dict[str, Tuple[Optional[float], Tuple[str, ...]]] = {}


def register(name: str, order: Optional[float] = None, compare_with: Sequence[str] = (),
             **fixed: Any) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name``; ``fixed`` are constructor arguments that the
    name stands for (e.g. ``loss='cosine', adaptive=True``), not settable as options. For the report:
    ``order`` sorts the attackers in its tables (undeclared: after the declared ones, in registration
    order); ``compare_with`` names the attackers this one adds to (it is compared with the first of them
    that ran on the same victims: what modelling the defence adds)."""
    def deco(cls: type) -> type:
        _REGISTRY.add(name, (cls, dict(fixed)), same=_same_entry)
        _REPORTING[name] = (order, tuple(compare_with))
        return cls
    return deco


def attacker_order() -> List[str]:
    """The registered attackers in the report's table order (declared ``order`` first, then registration order)."""
    names = _REGISTRY.names()
    declared = sorted((n for n in names if _REPORTING[n][0] is not None), key=lambda n: _REPORTING[n][0])
    return declared + [n for n in names if _REPORTING[n][0] is None]


def compare_with(name: str) -> Tuple[str, ...]:
    """The attackers ``name`` is compared with on the same victims (its ``register(compare_with=...)``)."""
    return _REPORTING.get(name, (None, ()))[1]


def _same_entry(a: tuple, b: tuple) -> bool:
    """One class imported twice (its module reloaded) with the same fixed arguments is the same attacker."""
    return (a[0].__module__, a[0].__qualname__, a[1]) == (b[0].__module__, b[0].__qualname__, b[1])


def available_attackers() -> List[str]:
    return sorted(_REGISTRY)


def _unknown(name: Any, key: str) -> ConfigError:
    return _REGISTRY.unknown(name, key)


def option_names(name: str) -> List[str]:
    """The options a user may set for attacker ``name`` (``attack.attacker_options.<name>``)."""
    cls, fixed = _REGISTRY[name]
    return [f.name for f in fields(cls) if f.init and f.name not in fixed and f.name != "name"]


def get_attacker(name: str, options: Optional[Mapping[str, Any]] = None, key: str = "attack.attackers"):
    """The attacker registered as ``name``, built with ``options`` (its own keys; unknown ones are errors)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown(name, key)
    cls, fixed = _REGISTRY[name]
    options = dict(options or {})
    valid = option_names(name)
    for k in options:
        if k not in valid:
            near = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'?" if near else (f"valid keys: {', '.join(valid)}" if valid
                                                            else "it takes no options")
            raise ConfigError(f"unknown config key 'attack.attacker_options.{name}.{k}'; {hint}")
    attacker = cls(name=name, **fixed, **options)
    attacker.check(f"attack.attacker_options.{name}")
    return attacker


def check_portfolio(names: Optional[Sequence[str]], options: Optional[Mapping[str, Any]] = None) -> None:
    """Config check of ``attack.attackers`` and ``attack.attacker_options`` (one-line ConfigError)."""
    options = dict(options or {})
    if names is not None:
        if isinstance(names, str) or not len(names):
            raise ConfigError("config key 'attack.attackers' must be a non-empty list of attacker names "
                              f"(known: {', '.join(available_attackers())})")
        for i, n in enumerate(names):
            if n not in _REGISTRY:
                raise _unknown(n, f"attack.attackers[{i}]")
            if list(names).count(n) > 1:
                raise ConfigError(f"config key 'attack.attackers' lists '{n}' twice")
    for n, opts in options.items():
        if n not in _REGISTRY:
            raise _unknown(n, f"attack.attacker_options.{n}")
        if opts is not None and not isinstance(opts, Mapping):
            raise ConfigError(f"config key 'attack.attacker_options.{n}' must be a mapping of its options")
        get_attacker(n, opts or {})


def build_portfolio(names: Sequence[str], options: Optional[Mapping[str, Any]] = None) -> list:
    """The attackers of ``attack.attackers`` with their ``attack.attacker_options``, in order."""
    options = dict(options or {})
    check_portfolio(names, options)
    return [get_attacker(n, options.get(n) or {}) for n in names]


from ggl.attack.attackers.base import Attacker  # noqa: E402  (the registry must exist first)
from ggl.attack.attackers.portfolio import portfolio_units, run_portfolio  # noqa: E402
# the attackers this package ships, one module each (base, portfolio: the machinery); each registers itself
SHIPPED = ("eot", "ggl_latent", "inverting_gradients", "grid_observed", "grid_cell", "grid_decoded")
for _module in SHIPPED:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Attacker", "SHIPPED", "attacker_order", "available_attackers", "build_portfolio", "check_portfolio",
           "compare_with", "get_attacker", "option_names", "portfolio_units", "register", "run_portfolio"]
