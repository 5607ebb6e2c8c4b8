"""Value checks shared by the config sections: each error names the key and what is allowed."""
from __future__ import annotations

from typing import Any

from ggl.core.errors import ConfigError


def one_of(value: Any, allowed: tuple, key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' = {value!r} is not one of {', '.join(map(str, allowed))}")


def in_range(value: float, lo: float, hi: float, key: str, lo_open: bool = False) -> None:
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"config key '{key}' = {value!r} is out of range {bracket}{lo}, {hi}]")
