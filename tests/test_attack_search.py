"""Early stopping (attack.patience) and the search's progress accounting; the in-place l2 loss."""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import one_torch_thread, tiny_victim  # noqa: F401
from ggl.attack import attack
from ggl.attack.objective import match_loss
from ggl.attack.schema import AttackConfig
from ggl.attack.search import Patience, search_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    G, obs, y = tiny_victim()
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


def test_l2_loss_may_consume_its_scratch_and_reads_any_layout():
    """The objective's evaluation hands match_loss its own trial updates to overwrite (consume=True): the
    same numbers; an expanded view (vmap's output that does not depend on the batch) is left alone; a
    permuted layout (a channels-last convolution gradient) gives the contiguous copy's loss."""
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(5, 3, dtype=torch.float64, generator=gen), torch.randn(7, dtype=torch.float64, generator=gen)]
    t = [torch.randn(4, 3, 5, dtype=torch.float64, generator=gen).transpose(1, 2),  # (4, 5, 3), permuted
         torch.randn(1, 7, dtype=torch.float64, generator=gen).expand(4, 7)]      # one row, expanded
    with torch.no_grad():
        expect = match_loss([x.contiguous() for x in t], g)
        scratch = [x.clone() for x in t]  # clone keeps the permuted layout; the expanded view stays a view
        scratch[1] = t[1]
        got = match_loss(scratch, g, consume=True)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=0)
    torch.testing.assert_close(scratch[0], (t[0] - g[0]) ** 2, rtol=0, atol=0)  # consumed: overwritten in place
    assert torch.equal(t[1], t[1][:1].expand(4, 7))  # the expanded view: not written
