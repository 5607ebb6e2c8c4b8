"""Options that do nothing in the chosen mode are a warning line on stderr, never silence."""
from __future__ import annotations

import pytest

import ggl.core.checks as checks
from ggl.config import available_configs, config_task, load_config, resolve_config_path


@pytest.fixture(autouse=True)
def fresh():
    checks._warned.clear()
    yield
    checks._warned.clear()


@pytest.mark.parametrize("config, overrides, needle", [
    ("fed_q4.yaml", ["fl.local_steps=1", "fl.local_epochs=5"], "'fl.local_epochs' = 5.0 does nothing: fl.local_steps = 1"),
    ("fed_q4.yaml", ["fl.clients_per_round=2", "fl.client_fraction=0.5"], "'fl.client_fraction' = 0.5 does nothing"),
    ("fed_q4.yaml", ["audit.probe=fedsgd", "audit.local_steps=7"], "'audit.local_steps' = 7 does nothing: audit.probe is fedsgd"),
    ("fed_q4.yaml", ["audit.local_steps=7"], "'audit.local_steps' = 7 does nothing: audit.probe is null"),
    ("fed_q4.yaml", ["data.alpha=0.1"], "'data.alpha' = 0.1 does nothing: data.partition is iid"),
    ("fed_q4.yaml", ["data.partition=dirichlet", "data.classes_per_client=3"], "'data.classes_per_client' = 3 does nothing"),
    ("attack.yaml", ["attack.attackers=[ggl-l2]", "attack.attacker_options={ggl-eot: {samples: 4}}"],
     "'attack.attacker_options.ggl-eot' = {'samples': 4} does nothing: 'ggl-eot' is not in attack.attackers (ggl-l2)"),
    ("attack.yaml", ["attack.attacker_options={inverting-gradients: {steps: 5}}"],
     "'inverting-gradients' is not in attack.attackers (null: one GGL attacker)"),
    ("attack.yaml", ["attack.optimizer=adam", "attack.population=20"], "'attack.population' = 20 does nothing: attack.optimizer = adam runs no CMA-ES"),
    ("attack.yaml", ["attack.optimizer=cmaes", "attack.adam_steps=20"], "'attack.adam_steps' = 20 does nothing"),
])
def test_an_option_that_does_nothing_is_one_warning_line(capsys, config, overrides, needle):
    load_config(config, overrides)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("warning:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_the_shipped_configs_warn_only_where_a_key_really_does_nothing(capsys):
    for name in available_configs():
        if config_task(resolve_config_path(name)) is not None:  # not a sweep file
            load_config(name)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    # every shipped config sets only keys that act (attack_portfolio.yaml's local_steps is null under fedsgd)
    assert lines == []
