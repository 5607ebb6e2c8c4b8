"""A search sized by what the machine holds: a population larger than memory is evaluated in chunks (the
same losses), a search that needs a graph through more candidates than fit is one line naming the key and
the largest value that fits (the issue's population=100000 and IG restarts died in the allocator)."""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import one_torch_thread, tiny_victim  # noqa: F401
import ggl.attack.memory as memory
from ggl.attack import GGLObjective, attack
from ggl.attack.attackers import get_attacker
from ggl.attack.attackers.inverting_gradients import PixelParametrisation
from ggl.attack.schema import AttackConfig
from ggl.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _room_for(monkeypatch, objective, candidates: int, grad: bool = False) -> None:
    """Pretend the machine has free memory for ``candidates`` candidates of ``objective`` (and a bit)."""
    per = objective.candidate_bytes(grad)
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((candidates + 0.5) * per / memory.SHARE))


def test_the_estimate_grows_with_the_model_and_the_graph():
    G, obs, y = tiny_victim()
    objective = GGLObjective(obs, G, y)
    params = sum(t.numel() for t in obs.update)
    assert objective.candidate_bytes(True) > objective.candidate_bytes(False) >= 3 * 4 * params


def test_a_population_beyond_memory_is_evaluated_in_chunks_with_the_same_losses(monkeypatch):
    G, obs, y = tiny_victim()
    z = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    whole = GGLObjective(obs, G, y)(z)
    objective = GGLObjective(obs, G, y)
    _room_for(monkeypatch, objective, 30)
    calls = []
    inner = objective._batched
    monkeypatch.setattr(objective, "_batched", lambda part: calls.append(len(part)) or inner(part))
    assert torch.allclose(objective(z), whole, rtol=1e-5, atol=0)
    assert max(calls) <= 30 and sum(calls) == 200


@pytest.mark.parametrize("optimizer", ["adam", "cmaes_adam"])
def test_adam_restarts_beyond_memory_are_one_line_naming_the_largest_that_fits(monkeypatch, optimizer):
    G, obs, y = tiny_victim()
    _room_for(monkeypatch, GGLObjective(obs, G, y), 5, grad=True)
    cfg = AttackConfig(optimizer=optimizer, population=4, generations=1, adam_steps=1, adam_restarts=50)
    with pytest.raises(ConfigError) as err:
        attack(obs, G, cfg, seed=0)
    msg = str(err.value)
    assert "'attack.adam_restarts' = 50" in msg and "at most 5 fit" in msg and "\n" not in msg
    attack(obs, G, AttackConfig(optimizer=optimizer, population=4, generations=1, adam_steps=1, adam_restarts=5),
           seed=0)


def test_inverting_gradients_restarts_beyond_memory_are_one_line(monkeypatch):
    G, obs, y = tiny_victim()
    ig = get_attacker("inverting-gradients", {"restarts": 400, "steps": 1})
    model = obs.build_model()
    pixels = GGLObjective(obs, PixelParametrisation(obs.channels, obs.image_size), y, loss="cosine", model=model)
    _room_for(monkeypatch, pixels, 7, grad=True)
    with pytest.raises(ConfigError, match=r"'attack.attacker_options.inverting-gradients.restarts' = 400 .*at most 7 fit"):
        ig(obs, None, AttackConfig(), seed=0, labels=y, model=model)


def test_one_candidate_that_does_not_fit_is_refused_before_the_search(monkeypatch):
    G, obs, y = tiny_victim()
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    with pytest.raises(ConfigError, match="'audit.batch_size' = 1 .*not even one candidate fits"):
        attack(obs, G, AttackConfig(optimizer="cmaes", population=4, generations=1), seed=0)
