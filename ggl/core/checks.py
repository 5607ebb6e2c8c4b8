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


SEED_MAX = 2**32 - 1       # numpy's legacy seeding and Lightning's seed_everything take [0, 2**32 - 1]
INT_MAX = 2**63 - 1        # every integer key must fit an int64 (torch, numpy)


def short(value: Any) -> str:
    """A value for an error message: thousands of digits shortened to their count."""
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...({len(text)} characters)"


def check_seed(value: int, key: str) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"config key '{key}' = {short(value)} must be in 0..{SEED_MAX} (2**32 - 1)")


def at_least(value: Any, lo: int, key: str, hint: str = "") -> None:
    """``value >= lo`` (None passes: optional keys check their null elsewhere), else one line naming the key."""
    if value is not None and value < lo:
        raise ConfigError(f"config key '{key}' = {value} must be >= {lo}{hint}")
