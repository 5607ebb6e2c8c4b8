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


class _Bumpy:
    """A row-independent float64 objective with many minima: what the search needs of a GGLObjective,
    so that S batched searches and S searches alone compute the same numbers on any CPU."""
    dim = latent_dim = 6
    batch, device, memory_key = 1, torch.device("cpu"), "attack.population"
    labels = torch.tensor([0])

    def __init__(self):
        self.evaluations = 0
        self.target = torch.linspace(-1, 1, self.dim, dtype=torch.float64)

    def __call__(self, z):
        self.evaluations += len(z)
        d = z.double() - self.target
        return (d ** 2).sum(1) + 0.3 * torch.cos(4 * d).sum(1)

    def images(self, z):
        return z.view(len(z), 1, 1, 2, 3)

    def check_fits(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("optimizer", ["cmaes", "adam", "cmaes_adam"])
def test_search_seeds_batched_in_one_population_are_the_searches_run_alone(optimizer):
    """attack.search_seeds = 3: one population holding three independent searches gives each search's
    result exactly as that search run by itself (its own seed), and the first is the one-seed search."""
    from ggl.attack.search import run_search, search_seeds

    base = dict(optimizer=optimizer, population=8, generations=6, adam_steps=12, adam_restarts=2, sigma=0.5)
    ticks = []
    batched = run_search(_Bumpy(), AttackConfig(**base, search_seeds=3), seed=11, tick=ticks.append)
    assert len(batched.runs) == 3 and batched.runs[0] is batched
    assert sum(ticks) == 3 * search_units(AttackConfig(**base))
    seeds = search_seeds(11, 3)
    assert seeds[0] == 11 and len(set(seeds)) == 3
    alone = [run_search(_Bumpy(), AttackConfig(**base), seed=s) for s in seeds]
    for b, a in zip(batched.runs, alone):
        assert b.loss == a.loss and b.curve == a.curve
        assert torch.equal(b.z, a.z)
    assert len({round(r.loss, 9) for r in alone}) > 1  # the seeds are different searches


def test_search_seeds_with_early_stopping_run_one_after_the_other():
    from ggl.attack.search import run_search, search_seeds

    base = dict(optimizer="cmaes_adam", population=8, generations=30, adam_steps=30, adam_restarts=2, patience=2)
    batched = run_search(_Bumpy(), AttackConfig(**base, search_seeds=2), seed=3)
    alone = [run_search(_Bumpy(), AttackConfig(**base), seed=s) for s in search_seeds(3, 2)]
    assert [r.curve for r in batched.runs] == [r.curve for r in alone]
