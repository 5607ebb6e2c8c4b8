"""Every integer key is a bounded count or size, or declared no count: the schema sections, each shipped
defence's fields and each shipped attacker's options are walked, so a new key without a bound fails here.
Each bound is then enforced: its limit + 1 is one line naming the key."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from ggl.attack.attackers import _REGISTRY as ATTACKERS, get_attacker, option_names
from ggl.config import Config, load_config
from ggl.core.checks import LIMITS, NOT_COUNTS
from ggl.core.errors import ConfigError
from ggl.defenses import REGISTRY as DEFENCES, parse_defense


def _is_int(tp) -> bool:
    if tp is int:
        return True
    return any(_is_int(a) for a in typing.get_args(tp) if a is not type(None))


def section_keys(cls=Config, prefix: str = ""):
    """(key, is int) of every field of the schema, sections walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from section_keys(tp, f"{prefix}{f.name}.")
        elif _is_int(tp):
            yield f"{prefix}{f.name}"


def defence_keys():
    for name, cls in DEFENCES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_int(hints[f.name]):
                yield name, f.name, f"defenses.{name}.{f.name}"


def attacker_keys():
    for name, (cls, _) in ATTACKERS.items():
        hints = typing.get_type_hints(cls)
        for option in option_names(name):
            if _is_int(hints[option]):
                yield name, option, f"attacker_options.{cls.__name__}.{option}"


ALL_KEYS = list(section_keys()) + [k for *_, k in defence_keys()] + [k for *_, k in attacker_keys()]


def test_every_integer_key_has_a_bound_or_is_declared_no_count():
    assert ALL_KEYS and {"fl.rounds", "audit.local_steps", "attack.population",
                         "attacker_options.InvertingGradients.restarts"} <= set(ALL_KEYS)
    missing = [k for k in ALL_KEYS if k not in LIMITS and k not in NOT_COUNTS]
    assert not missing, f"integer keys with no upper bound in ggl.core.checks.LIMITS: {missing}"
    assert not set(LIMITS) & set(NOT_COUNTS)
    assert not set(LIMITS) - set(ALL_KEYS), "bounds of keys that do not exist"


@pytest.mark.parametrize("key", [k for k in section_keys() if k in LIMITS])
def test_a_section_key_above_its_bound_is_one_line(key):
    task = "gan" if key.startswith("gan.") else "attack" if key.startswith("attack.") else "fedavg"
    config = {"gan": "gan_mnist.yaml", "attack": "attack.yaml", "fedavg": "fed_q4.yaml"}[task]
    extra = ["audit.probe=local_update"] if key == "audit.local_steps" else []
    with pytest.raises(ConfigError) as err:
        load_config(config, extra + [f"{key}={LIMITS[key] + 1}"])
    msg = str(err.value)
    assert f"'{key}' = {LIMITS[key] + 1}" in msg and "too large" in msg and "\n" not in msg


@pytest.mark.parametrize("name, field, key", list(defence_keys()))
def test_a_defence_field_above_its_bound_is_one_line(name, field, key):
    with pytest.raises(ConfigError, match=rf"'defenses\[0\].{field}' = {LIMITS[key] + 1}"):
        parse_defense({"name": name, field: LIMITS[key] + 1}, "defenses[0]")


@pytest.mark.parametrize("name, option, key", list(attacker_keys()))
def test_an_attacker_option_above_its_bound_is_one_line(name, option, key):
    with pytest.raises(ConfigError, match=rf"'attack.attacker_options.{name}.{option}' = {LIMITS[key] + 1} is too"):
        get_attacker(name, {option: LIMITS[key] + 1})


def test_the_reported_unbounded_keys_are_refused():
    """The issue's cases: 100000000 local steps of the probe ran for days; IG restarts had no bound."""
    with pytest.raises(ConfigError, match="'audit.local_steps' = 100000000 is too large"):
        load_config("fed_q4.yaml", ["audit.probe=local_update", "audit.local_steps=100000000"])
    with pytest.raises(ConfigError, match="'attack.attacker_options.inverting-gradients.restarts' = 1000000000"):
        load_config("attack.yaml", ["attack.attackers=[inverting-gradients]",
                                    "attack.attacker_options={inverting-gradients: {restarts: 1000000000}}"])
