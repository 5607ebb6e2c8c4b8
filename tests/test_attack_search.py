"""Early stopping (attack.patience) and the search's progress accounting; the in-place l2 loss."""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import TinyPrior, make_observation, one_torch_thread  # noqa: F401
from ggl.attack import attack
from ggl.attack.objective import match_loss
from ggl.attack.schema import AttackConfig
from ggl.attack.search import Patience, search_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _victim():
    G = TinyPrior()
    y = torch.tensor([4])
    x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(3)), y)
    return G, make_observation(x, y), y


def test_patience_counts_updates_without_a_relative_improvement():
    p = Patience(2)
    assert not p.exhausted(10.0)          # the first loss is an improvement
    assert not p.exhausted(9.0)           # -10%: improvement
    assert not p.exhausted(8.9999)       # -0.001%: stale 1
    assert p.exhausted(9.5)               # stale 2 -> stop
    never = Patience(None)
    assert not any(never.exhausted(1.0) for _ in range(100))


@pytest.mark.parametrize("optimizer", ["cmaes", "adam", "cmaes_adam"])
def test_early_stopping_ends_a_stalled_search_and_the_bar_still_completes(optimizer):
    G, obs, y = _victim()
    base = dict(optimizer=optimizer, population=6, generations=40, adam_steps=40, adam_restarts=2, sigma=0.3)
    ticks, steps = [], []
    full = attack(obs, G, AttackConfig(**base), seed=0, labels=y, tick=ticks.append)
    assert sum(ticks) == search_units(AttackConfig(**base)) == len(full.curve)
    ticks.clear()
    early = attack(obs, G, AttackConfig(**base, patience=2), seed=0, labels=y, tick=ticks.append,
                   watch=lambda s: steps.append(s.step))
    assert sum(ticks) == search_units(AttackConfig(**base))  # skipped units are ticked: the bar ends at 100%
    assert len(early.curve) < len(full.curve) and len(steps) == len(early.curve)
    # the same search until it stopped: the curves agree on their common prefix (CMA-ES draws the same)
    if optimizer != "adam":
        n = next(i for i, (a, b) in enumerate(zip(full.curve, early.curve + [None])) if b is None or a != b)
        assert n >= 3
    assert early.loss >= full.loss


def test_l2_loss_in_place_is_the_same_number_with_or_without_a_gradient():
    g = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    t = [torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, 7, dtype=torch.float64)]
    with_grad = match_loss(t, g)
    with torch.no_grad():
        without = match_loss(t, g)
    expect = torch.stack([((t[0].detach() - g[0]) ** 2).flatten(1).sum(1), ((t[1] - g[1]) ** 2).sum(1)]).mean(0)
    assert torch.equal(with_grad.detach(), without) and torch.equal(without, expect)
    with_grad.sum().backward()  # the gradient path still works
    torch.testing.assert_close(t[0].grad, (t[0].detach() - g[0]))  # d/dt of mean of two sums: 2(t-g)/2
