"""The plugin design: one registry, bad input, attacker models that refuse, and the example
defense (examples/my_defense.py, shown in docs/extending.md) through a 2-round federation and an adaptive attack."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from _attack_fixtures import TinyPrior, client_gradient, make_observation, one_torch_thread  # noqa: F401
from ggl.defenses import REGISTRY, Defense, no_model, parse_defense, register
from ggl.core.errors import ConfigError, UserError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_defense.py"


@pytest.fixture
def registered():
    """Defenses a test registers are gone afterwards (the registry is process-wide)."""
    before = REGISTRY.snapshot()
    yield
    REGISTRY.restore(before)


def test_every_shipped_defense_is_registered_and_round_trips_its_config():
    assert {"quantize", "clip", "noise", "topk", "sign", "identity", "prune", "qsgd", "soteria"} <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        d = parse_defense({"name": name, **({"std": 0.1} if name == "noise" else {})}, "defenses[0]")
        assert isinstance(d, cls) and d.attack_model().kind in ("reapply", "expectation", "observed mask")


def test_an_unknown_defense_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        parse_defense({"name": "dropout"}, "defenses[1]")
    msg = str(err.value)
    assert "'defenses[1].name' = 'dropout' is not a known defence" in msg and "\n" not in msg
    assert all(name in msg for name in ("clip", "noise", "prune", "qsgd", "quantize", "sign", "soteria", "topk"))


def test_a_defense_without_an_attacker_model_refuses_an_adaptive_attack_in_one_line(registered):
    from ggl.attack.trial import DefenseModel
    from ggl.sweep.plan import make_point

    @register
    class Opaque(Defense):
        name: str = "opaque"

        def transform(self, tensors, update):
            return list(tensors), None

        def attack_model(self):
            return no_model("its randomness is secret and biased")

    with pytest.raises(UserError) as err:
        DefenseModel([{"name": "clip", "max_norm": 1.0}, {"name": "opaque"}], observed=[torch.ones(2)])
    msg = str(err.value)
    assert "attack.adaptive=true" in msg and "'opaque'" in msg and "its randomness is secret" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="no model of defence 'opaque'.*drop 'adaptive'"):
        make_point({"defenses": [{"name": "opaque"}], "attackers": ["non-adaptive", "adaptive"],
                    "fed.audit.rounds": [0]})
    point = make_point({"defenses": [{"name": "opaque"}], "attackers": ["non-adaptive"], "fed.audit.rounds": [0]})
    assert [a.attacker for a in point.attacks] == ["non-adaptive"]  # a plain attack is fine


def test_register_refuses_a_second_defense_of_the_same_name(registered):
    with pytest.raises(ConfigError, match="two defences are registered as 'clip': ggl.defenses.clip.Clip and "):
        @register
        class Clip(Defense):  # noqa: F811
            name: str = "clip"


def test_a_plugin_class_of_the_same_name_cannot_shadow_a_built_in_defence(registered, monkeypatch):
    """The old check compared only ``__qualname__``: a plugin's own top-level ``Clip`` replaced the
    built-in clip without a word. Now the module counts too, and the built-in stays."""
    import types

    from ggl.defenses.clip import Clip as BuiltIn

    plugin = types.ModuleType("my_plugin")
    monkeypatch.setitem(sys.modules, "my_plugin", plugin)
    exec("from ggl.defenses import Defense\nclass Clip(Defense):\n    name: str = 'clip'\n", plugin.__dict__)
    with pytest.raises(ConfigError) as err:
        register(plugin.Clip)
    assert "ggl.defenses.clip.Clip and my_plugin.Clip" in str(err.value) and "\n" not in str(err.value)
    assert REGISTRY["clip"] is BuiltIn


# ------------------------------------- the example of docs/extending.md (moved there from the README)
@pytest.fixture
def example(registered):
    spec = importlib.util.spec_from_file_location("my_defense", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_defense_runs_a_two_round_federation(example, make_cfg):
    from ggl.fl.callbacks import UpdateTransform
    from ggl.jobs.federation import run_federation

    class Record(UpdateTransform):
        sent = []

        def on_client_update(self, trainer, module, update):
            self.sent.append(update)
            return update

    record = Record()
    res = run_federation(make_cfg("defenses=[{name: threshold, tau: 0.5}]", "fl.local_steps=1", "data.limit=200"),
                         extra_callbacks=[record])
    assert res["final"]["rounds"] == 2 and len(record.sent) == 8
    for u in record.sent:  # every tensor sent keeps only entries >= half its largest |entry|
        for t in u.tensors:
            nz = t[t != 0].abs()
            assert nz.numel() and float(nz.min()) >= 0.5 * float(t.abs().max())
    assert res["final"]["uplink_bits_per_round"] == sum(u.bits for u in record.sent[4:])
    assert res["final"]["compression_ratio"] > 1.0


@pytest.mark.usefixtures("one_torch_thread")
def test_example_defense_is_modelled_by_the_adaptive_attacker(example):
    from test_new_defenses import _at_truth

    from ggl.attack import attack
    from ggl.attack.schema import AttackConfig

    adaptive, unaware = _at_truth([{"name": "threshold", "tau": 0.3}])
    assert unaware > 1e-9 and adaptive <= 1e-12 * unaware

    G = TinyPrior()
    z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([5])
    x = G(z_true, y)
    obs = make_observation(x, y, defenses=[{"name": "threshold", "tau": 0.3}],
                           transform=lambda g: example.threshold(g, 0.3))
    cfg = AttackConfig(optimizer="cmaes", population=8, generations=3, sigma=1.0, adaptive=True)
    res = attack(obs, G, cfg, seed=0)  # the whole adaptive path: labels, objective with the model, search
    assert res.labels.tolist() == [5] and torch.isfinite(torch.tensor(res.loss))


def test_readme_shows_the_example_file_verbatim():
    readme = (EXAMPLE.parent.parent / "docs" / "extending.md").read_text()  # moved from the README (issue 25)
    code = EXAMPLE.read_text()
    assert code[code.index("import torch"):] in readme  # the docs cannot drift from the tested file


def test_the_report_family_of_a_label_is_the_defence_class_that_claims_it(registered):
    """``defense_family`` reads each part of a chain label through the registry: a new defence's labels join
    its declared ``family`` (else its name) with no edit in ggl/report; a part no defence claims keeps
    the old fallback (its letters)."""
    from ggl.defenses import defense_family, label_owner

    assert [defense_family(label) for label in ("fp32", "q4-stochastic-global", "clip0.25+nm0.1", "std0.01+q2",
                                                "top0.01-ef", "sign", "prune10", "soteria10-fc", "qsgd4-b512")] == [
        "fp32", "quantize", "clip+noise", "noise+quantize", "top-k", "sign", "prune", "soteria", "qsgd"]
    assert REGISTRY["topk"].family == "top-k" and REGISTRY["clip"].family == "clip"
    assert defense_family("shuffle3+q4") == "shuffle+quantize"  # nobody claims 'shuffle3' yet

    @register
    class Shuffle(Defense):
        name: str = "shuffle"
        family = "permutation"
        label_pattern = r"shuf|shuffle"

    assert label_owner("shuffle3") is Shuffle and label_owner("shuf2") is Shuffle
    assert defense_family("shuffle3+q4") == "permutation+quantize" and defense_family("shuf2") == "permutation"

    @register
    class Sparse(Defense):   # no family, no pattern: its name is both
        name: str = "sparse"

    assert Sparse.family == "sparse" and defense_family("clip1+sparse0.2") == "clip+sparse"
