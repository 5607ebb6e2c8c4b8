"""Value checks shared by the config sections: each error names the key and what is allowed.

``LIMITS`` is the one registry of upper bounds of every count / size key (sections ``fl.rounds``, defence
fields ``defenses.<name>.<field>``, attacker options ``attacker_options.<Class>.<field>``): beyond these a
value is a typo, not a budget (days of CPU, or more memory than a machine has). ``count()`` checks one.
``tests/test_bounds.py`` walks every schema dataclass and requires each integer field to be here or in
``NOT_COUNTS`` (with why). A search's memory is estimated from its shapes separately (``ggl.attack.memory``)."""
from __future__ import annotations

import sys
from typing import Any, Optional, Set

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


LIMITS = {
    "torch_threads": 1024, "attack.torch_threads": 1024, "gan.num_threads": 1024,
    "data.limit": 100_000_000, "data.num_clients": 100_000, "data.classes_per_client": 100_000,
    "fl.rounds": 1_000_000, "fl.clients_per_round": 100_000, "fl.local_steps": 100_000, "fl.batch_size": 65_536,
    "fl.eval_batch_size": 65_536,
    "audit.num_images": 100_000, "audit.batch_size": 4096, "audit.local_steps": 100_000,
    "gan.latent_dim": 65_536, "gan.g_width": 4096, "gan.d_width": 4096, "gan.n_critic": 1000,
    "gan.batch_size": 65_536, "gan.epochs": 1_000_000, "gan.max_steps": 100_000_000, "gan.bn_recalibration": 100_000,
    "gan.grid_per_class": 1000, "gan.grid_size": 100_000, "gan.eval_samples": 10_000_000,
    "gan.classifier_epochs": 100_000,
    "attack.population": 100_000, "attack.generations": 10_000_000, "attack.restarts": 10_000,
    "attack.adam_steps": 10_000_000, "attack.adam_restarts": 100_000, "attack.max_observations": 100_000_000,
    "attack.patience": 10_000_000, "attack.search_seeds": 1000,
    "defenses.quantize.bits": 32, "defenses.qsgd.levels": 2 ** 24, "defenses.qsgd.bucket_size": 2 ** 31,
    "attacker_options.InvertingGradients.steps": 10_000_000, "attacker_options.InvertingGradients.restarts": 10_000,
    "attacker_options.EOTAttacker.samples": 100_000,
}
# integer keys that are no count or size (a larger value is no more work), with why
NOT_COUNTS = {
    "seed": "a seed (check_seed)", "data.split_seed": "a seed (check_seed)",
    "checkpoint_every": "a period: larger is less work", "fl.eval_every": "a period: larger is less work",
    "gan.sample_every": "a period: larger is less work", "gan.quality_every": "a period: larger is less work",
    "attack.image_every": "a period: larger is less work",
    "audit.victim_client": "an index, checked against data.num_clients", "audit.rounds": "round numbers",
    "fl.simulate_failures": "round numbers",
}


def count(value: Any, key: str, limit: str = "", lo: Optional[int] = 1, hint: str = "") -> None:
    """An integer count or size in ``lo..LIMITS[limit or key]`` (None passes: optional keys; ``lo=None``:
    the caller checks the lower end), else one line naming the key."""
    if value is None:
        return
    most = LIMITS[limit or key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"config key '{key}' = {short(value)} must be an integer{hint}")
    if lo is not None and value < lo:
        raise ConfigError(f"config key '{key}' = {short(value)} must be >= {lo}{hint}")
    if value > most:
        raise ConfigError(f"config key '{key}' = {short(value)} is too large (at most {most:,}): beyond it a "
                          f"typo, not a budget; did you mean a smaller number?")


def at_least(value: Any, lo: int, key: str, hint: str = "") -> None:
    """``value >= lo`` (None passes: optional keys check their null elsewhere), else one line naming the key."""
    if value is not None and value < lo:
        raise ConfigError(f"config key '{key}' = {value} must be >= {lo}{hint}")


_warned: Set[str] = set()


def unused(key: str, value: Any, why: str) -> None:
    """A key set to a value that does nothing in the chosen mode: one warning line on stderr (once per
    process: a sweep loads the same config many times)."""
    line = f"warning: config key '{key}' = {short(value)} does nothing: {why}"
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)


def changed(obj: Any, name: str) -> bool:
    """Whether dataclass field ``name`` of ``obj`` differs from its schema default."""
    return getattr(obj, name) != type(obj).__dataclass_fields__[name].default
