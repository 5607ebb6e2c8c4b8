"""The attacker portfolio: registry and bad input, each attacker beats the label-only baseline, the
EOT/likelihood attacker's exact likelihood and its refusal, the best attacker per victim."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _attack_fixtures import TinyPrior, make_observation, one_torch_thread  # noqa: F401
from ggl.attack.attackers import available_attackers, build_portfolio, check_portfolio, get_attacker
from ggl.attack.schema import AttackConfig
from ggl.defenses.quantize import quantize_update
from ggl.core.errors import ConfigError, UserError
from ggl.audit import metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q2S = [{"name": "quantize", "bits": 2, "rounding": "stochastic", "range": "global"}]
FAST = AttackConfig(optimizer="cmaes", population=12, generations=20, sigma=1.0)


def _victim(G, k: int, defenses=(), seed_offset=0):
    """Victim k: a prior image of label k % 10 (seeded), its FedSGD gradient through ``defenses``
    (stochastic rounding with the client's own seeded draws)."""
    y = torch.tensor([k % 10])
    x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(200 + k)), y)
    transform = None
    if defenses:
        spec = defenses[0]
        gen = torch.Generator().manual_seed(300 + k + seed_offset)
        transform = lambda g: quantize_update(g, spec["bits"], spec["rounding"], spec["range"], generator=gen)[0]  # noqa: E731
    return x, y, make_observation(x, y, defenses=defenses, transform=transform)


def _class_mean(G, y) -> torch.Tensor:
    """The strongest label-only baseline (ggl.audit.baselines): the prior's mean image of the true class."""
    from ggl.audit.baselines import prior_class_means

    return prior_class_means(G, 10)[y]


def _psnr(a, b) -> float:
    return float(metrics.psnr(a.clamp(0, 1), b)[0])


# ------------------------------------------------------------------------------------------- registry

def test_unknown_attacker_lists_the_known_ones_in_one_line():
    with pytest.raises(ConfigError) as err:
        get_attacker("ggl-l3")
    msg = str(err.value)
    assert "'ggl-l3'" in msg and "did you mean 'ggl-l2'" in msg and "\n" not in msg
    for name in available_attackers():
        assert name in msg
    with pytest.raises(ConfigError, match=r"attack.attackers\[1\]"):
        check_portfolio(["ggl-l2", "pixel-magic"])
    with pytest.raises(ConfigError, match="twice"):
        check_portfolio(["ggl-l2", "ggl-l2"])
    with pytest.raises(ConfigError, match="non-empty list"):
        check_portfolio("ggl-l2")


def test_attacker_options_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"attack.attacker_options.ggl-eot.sample'; did you mean 'samples'"):
        get_attacker("ggl-eot", {"sample": 4})
    with pytest.raises(ConfigError, match="samples"):
        get_attacker("ggl-eot", {"samples": 0})
    with pytest.raises(ConfigError, match="takes no options"):
        get_attacker("ggl-l2", {"loss_kind": "cosine"})  # the name fixes the loss: not an option
    with pytest.raises(ConfigError, match="tv_weight"):
        get_attacker("inverting-gradients", {"tv_weight": -1.0})
    assert get_attacker("inverting-gradients", {"steps": 7}).steps == 7


def test_every_attacker_declares_what_it_is():
    for name in available_attackers():
        d = get_attacker(name).describe()
        assert d["attacker"] == name and d["loss"] and d["search"] and d["models"] in ("none", "adaptive", "eot")
    assert get_attacker("ggl-cosine-adaptive").describe()["models"] == "adaptive"
    assert get_attacker("inverting-gradients").uses_prior is False


def test_the_portfolio_config_names_known_attackers_with_valid_options():
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "attack_portfolio.yaml")
    names = list(node.attack.attackers)
    options = OmegaConf.to_container(node.attack.attacker_options)
    check_portfolio(names, options)
    assert set(names) == set(available_attackers())  # the file shows the whole portfolio
    eot = build_portfolio(names, options)[names.index("ggl-eot")]
    assert eot.mode == "likelihood" and eot.samples == 8


def test_ggl_entries_are_the_attack_with_their_loss_and_adaptivity():
    import dataclasses

    from ggl.attack import attack

    G = TinyPrior()
    x, y, obs = _victim(G, 3, [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}])
    cfg = AttackConfig(optimizer="cmaes", population=8, generations=4, sigma=1.0)
    for name, loss, adaptive in [("ggl-l2", "l2", False), ("ggl-cosine-adaptive", "cosine", True)]:
        mine = get_attacker(name)(obs, G, cfg, seed=5)
        ref = attack(obs, G, dataclasses.replace(cfg, loss=loss, adaptive=adaptive), seed=5)
        assert mine.loss == ref.loss and torch.equal(mine.images, ref.images)
    assert cfg.loss == "l2" and cfg.adaptive is False  # the caller's config is left alone


# ------------------------------------------------------------------------------------------- recovery

@pytest.mark.parametrize("name", ["ggl-l2", "ggl-l2-adaptive", "ggl-cosine", "ggl-cosine-adaptive"])
def test_each_latent_attacker_beats_the_class_mean_with_no_defence(name):
    G = TinyPrior()
    for k in (0, 3):
        x, y, obs = _victim(G, k)
        res = get_attacker(name)(obs, G, FAST, seed=k)
        assert res.labels.tolist() == y.tolist()
        gain = _psnr(res.images, x) - _psnr(_class_mean(G, y), x)
        assert gain > 4.0, f"{name}, victim {k}: {gain:.1f} dB over the class mean"


def test_inverting_gradients_beats_the_class_mean_without_a_prior():
    G = TinyPrior()
    x, y, obs = _victim(G, 3)
    ig = get_attacker("inverting-gradients", {"steps": 200, "restarts": 2})
    res = ig(obs, None, FAST, seed=0)  # no prior at all
    assert res.images.shape == x.shape and float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    assert res.labels.tolist() == y.tolist() and len(res.curve) == 200
    gain = _psnr(res.images, x) - _psnr(_class_mean(G, y), x)
    assert gain > 4.0, f"{gain:.1f} dB over the class mean"


def test_total_variation_of_a_step_edge():
    from ggl.attack.attackers.inverting_gradients import total_variation

    x = torch.zeros(2, 1, 1, 4, 4)
    x[1, ..., :, 2:] = 1.0  # one vertical edge: |dx| = 1 on 4 of the 12 horizontal pairs
    assert total_variation(x).tolist() == [0.0, pytest.approx(4 / 12)]


def test_eot_attacker_beats_the_class_mean_on_mild_and_strong_stochastic_rounding():
    G = TinyPrior()
    for bits in (8, 2):
        spec = [{"name": "quantize", "bits": bits, "rounding": "stochastic", "range": "global"}]
        for k in (0, 2):
            x, y, obs = _victim(G, k, spec)
            res = get_attacker("ggl-eot")(obs, G, FAST, seed=k)
            gain = _psnr(res.images, x) - _psnr(_class_mean(G, y), x)
            assert gain > 4.0, f"q{bits}-stochastic, victim {k}: {gain:.1f} dB over the class mean"


# ------------------------------------------------------------------------------------------- EOT

@pytest.mark.parametrize("chain", [[], [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}],
                                   [{"name": "clip", "max_norm": 0.5}], [{"name": "sign"}]])
def test_eot_refuses_a_deterministic_defence_in_one_line(chain):
    G = TinyPrior()
    _, _, obs = _victim(G, 1)
    obs.defenses = [dict(d) for d in chain]
    with pytest.raises(UserError) as err:
        get_attacker("ggl-eot")(obs, G, FAST, seed=0)
    msg = str(err.value)
    assert "deterministic" in msg and "ggl-l2-adaptive" in msg and "\n" not in msg


MINMAX = [[{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}],
          [{"name": "quantize", "bits": 8, "grid": "seed"}],
          [{"name": "clip", "max_norm": 0.5}, {"name": "quantize", "bits": 2, "rounding": "stochastic"}]]


@pytest.mark.parametrize("chain", MINMAX)
def test_adaptive_without_minmax_grids_refuses_min_max_quantizers_in_one_line(chain):
    G = TinyPrior()
    _, _, obs = _victim(G, 1)
    obs.defenses = [dict(d) for d in chain]
    assert get_attacker("ggl-l2-adaptive").refusal(obs) is None  # the default still attacks them
    with pytest.raises(UserError) as err:
        get_attacker("ggl-l2-adaptive", {"minmax_grids": False})(obs, G, FAST, seed=0)
    msg = str(err.value)
    assert "min/max quantizer" in msg and "ggl-l2-observed-grid" in msg and "\n" not in msg


def test_adaptive_without_minmax_grids_attacks_clipping_exactly_as_the_default():
    from ggl.defenses.clip import clip_update

    G = TinyPrior()
    x, y, _ = _victim(G, 2)
    obs = make_observation(x, y, defenses=[{"name": "clip", "max_norm": 0.05}],
                           transform=lambda g: clip_update(g, 0.05)[0])
    only = get_attacker("ggl-l2-adaptive", {"minmax_grids": False})
    assert only.refusal(obs) is None
    a, b = only(obs, G, FAST, seed=3), get_attacker("ggl-l2-adaptive")(obs, G, FAST, seed=3)
    assert torch.equal(a.images, b.images)
    obs.defenses = [{"name": "sign"}]
    assert only.refusal(obs) is None


def test_minmax_grids_on_an_attacker_that_models_nothing_is_a_config_error():
    with pytest.raises(ConfigError, match=r"attack.attacker_options.ggl-cosine.minmax_grids'; it takes no options"):
        check_portfolio(["ggl-cosine"], {"ggl-cosine": {"minmax_grids": False}})
    with pytest.raises(ConfigError, match="it takes no options"):
        get_attacker("ggl-l2-decoded", {"minmax_grids": False})
    with pytest.raises(ConfigError, match="true or false"):
        get_attacker("ggl-l2-adaptive", {"minmax_grids": "no"})


def test_eot_accepts_noise_and_noise_after_clipping():
    G = TinyPrior()
    _, _, obs = _victim(G, 1)
    eot = get_attacker("ggl-eot")
    for chain in ([{"name": "noise", "std": 0.01}], [{"name": "clip", "max_norm": 1.0},
                                                     {"name": "noise", "noise_multiplier": 0.1}]):
        obs.defenses = chain
        assert eot.refusal(obs) is None
    obs.defenses = [{"name": "noise", "std": 0.0}]  # zero noise is no randomness
    assert eot.refusal(obs) is not None


def test_eot_is_exact_where_the_chain_ends_in_its_random_step_and_samples_elsewhere():
    from ggl.attack.attackers.eot import DefenseChainModel

    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(6, 5, generator=gen), torch.randn(5, generator=gen)]
    noise = {"name": "noise", "std": 0.01}
    for chain, exact, samples in [
        (Q2S, True, 1),                                                          # exact tent, nothing sampled
        ([noise], True, 1),                                                      # exact Gaussian
        ([noise, Q2S[0]], True, 8),                                              # noise sampled, tent exact
        ([noise, {"name": "quantize", "bits": 4, "rounding": "nearest"}], False, 8),  # EOT over the noise
    ]:
        model = DefenseChainModel(chain, g, samples=8, mode="likelihood")
        assert (model.exact, model.samples) == (exact, samples), chain
        losses = model.loss(torch.randn(3, 35, generator=gen))
        assert losses.shape == (3,) and torch.isfinite(losses).all()
    assert not DefenseChainModel(Q2S, g, samples=8, mode="sample").exact


def test_eot_sampling_mode_beats_the_class_mean_on_gaussian_noise():
    G = TinyPrior()
    eot = get_attacker("ggl-eot", {"mode": "sample", "samples": 4})
    for k in (0, 2):
        x, y, obs = _victim(G, k)
        rms = float(torch.cat([t.flatten() for t in obs.update]).pow(2).mean().sqrt())
        gen = torch.Generator().manual_seed(k)
        obs.update = [t + 0.5 * rms * torch.randn(t.shape, generator=gen) for t in obs.update]
        obs.defenses = [{"name": "noise", "std": 0.5 * rms}]
        res = eot(obs, G, FAST, seed=k)
        gain = _psnr(res.images, x) - _psnr(_class_mean(G, y), x)
        assert gain > 4.0, f"victim {k}: {gain:.1f} dB over the class mean"


def test_run_portfolio_pairs_attackers_on_one_seed_and_records_refusals():
    from ggl.attack.attackers import portfolio_units, run_portfolio

    G = TinyPrior()
    _, _, obs = _victim(G, 4)
    cfg = AttackConfig(optimizer="cmaes", population=8, generations=3, sigma=1.0)
    attackers = build_portfolio(["ggl-l2", "ggl-eot", "inverting-gradients"], {"inverting-gradients": {"steps": 5}})
    out = run_portfolio(attackers, obs, G, cfg, seed=3)
    assert list(out) == ["ggl-l2", "ggl-eot", "inverting-gradients"]
    assert isinstance(out["ggl-eot"], str) and "deterministic" in out["ggl-eot"]  # no defence: refused, recorded
    assert torch.equal(out["ggl-l2"].images, get_attacker("ggl-l2")(obs, G, cfg, seed=3).images)
    assert len(out["inverting-gradients"].curve) == 5
    assert portfolio_units(attackers, cfg) == 3 + 3 + 5


def test_batched_chain_replays_the_clients_quantizer_exactly():
    from ggl.attack.attackers.eot import DefenseChainModel

    gen = torch.Generator().manual_seed(11)
    g = [torch.randn(30, 4, dtype=torch.float64, generator=gen), torch.randn(5, dtype=torch.float64, generator=gen)]
    flat = torch.cat([t.reshape(-1) for t in g])[None]
    for rng in ("global", "per_tensor"):
        for rounding in ("nearest", "stochastic"):
            spec = [{"name": "quantize", "bits": 2, "rounding": rounding, "range": rng}]
            chain = DefenseChainModel(spec, g, samples=1, mode="sample")
            gen = torch.Generator().manual_seed(5)
            ref, _ = quantize_update(g, 2, rounding, rng, generator=gen)
            if rounding == "stochastic":  # the client's own uniform draws, in its order
                gen = torch.Generator().manual_seed(5)
                parts = [flat[0]] if rng == "global" else [t.reshape(-1) for t in g]
                chain.draws[0] = torch.cat([torch.rand(p.numel(), generator=gen, dtype=torch.float64)
                                            for p in parts])[None]
            out = chain.transform(flat, chain.steps)[0, 0]
            assert torch.equal(out, torch.cat([t.reshape(-1) for t in ref])), (rng, rounding)


def test_likelihood_at_the_true_update_is_the_exact_probability_of_the_clients_draws():
    """-mean log P(q | u) from the observed grid == the probability of the codes the client drew."""
    from ggl.attack.attackers.eot import TAIL, DefenseChainModel, tent_nll

    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(40, 7, dtype=torch.float64, generator=gen), torch.randn(9, dtype=torch.float64, generator=gen)]
    flat = torch.cat([t.reshape(-1) for t in g])
    lo, hi = flat.min(), flat.max()
    step = (hi - lo) / 3
    s = (flat - lo) / step
    r = torch.rand(flat.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes = torch.floor(s + r).clamp(0, 3)
    q = codes * step + lo
    frac = s - torch.floor(s)
    p = torch.where(codes > torch.floor(s), frac, 1 - frac)  # probability of the code the client drew
    expected = torch.where(p >= TAIL, -torch.log(p), tent_nll(1 - p)).mean()
    observed = [c.view_as(t) for c, t in zip(torch.split(q, [t.numel() for t in g]), g)]
    chain = DefenseChainModel(Q2S, observed, mode="likelihood")
    assert chain.exact
    got = chain.loss(flat[None])
    torch.testing.assert_close(got, expected.view(1), rtol=1e-9, atol=0)
    # the tent itself: -log(1 - |d|) inside, finite and still rising past probability TAIL
    d = torch.tensor([0.0, 0.5, -0.5, 1 - TAIL, 1.0, 3.0], dtype=torch.float64)
    v = tent_nll(d)
    torch.testing.assert_close(v[:3], -torch.log1p(-d[:3].abs()))
    assert torch.isfinite(v).all() and v[3] < v[4] < v[5]


def test_eot_loss_ranks_the_true_image_first_on_q2_stochastic():
    """On 8 victims, the likelihood of the observed update is higher at the true image than at every
    one of 64 other images of the same class from the prior."""
    from ggl.attack.attackers.eot import DefenseChainModel, _objective_class

    G = TinyPrior()
    for k in range(8):
        x, y, obs = _victim(G, k, Q2S)
        z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(200 + k))
        others = torch.randn(64, 8, generator=torch.Generator().manual_seed(7 + k))
        chain = DefenseChainModel(obs.defenses, obs.update)
        objective = _objective_class()(obs, G, y, chain)
        with torch.no_grad():
            at_truth, elsewhere = objective(z_true), objective(others)
        assert float(at_truth) < float(elsewhere.min()), f"victim {k}"


# ------------------------------------- the example of docs/extending.md (moved there from the README)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_attacker.py"


@pytest.fixture
def example_attacker(monkeypatch):
    """examples/my_attacker.py loaded as a user would (its registration undone afterwards)."""
    import importlib.util

    import ggl.attack.attackers as registry

    before = registry._REGISTRY.snapshot()
    spec = importlib.util.spec_from_file_location("my_attacker", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    registry._REGISTRY.restore(before)


def test_example_attacker_joins_the_portfolio_by_its_one_file(example_attacker):
    from ggl.attack.attackers import run_portfolio

    assert "prior-best-of-n" in available_attackers()
    with pytest.raises(ConfigError, match="prior-best-of-n.samples' = 0 must be an integer >= 1"):
        build_portfolio(["prior-best-of-n"], {"prior-best-of-n": {"samples": 0}})
    G = TinyPrior()
    x, y, obs = _victim(G, 3)
    attackers = build_portfolio(["ggl-l2", "prior-best-of-n"], {"prior-best-of-n": {"samples": 64}})
    out = run_portfolio(attackers, obs, G, FAST, seed=0)
    mine = out["prior-best-of-n"]
    assert mine.images.shape == x.shape and mine.labels.tolist() == y.tolist()
    # it keeps the best of its draws: no draw matches the observed update better
    from ggl.attack import GGLObjective

    objective = GGLObjective(obs, G, mine.labels, loss="l2")
    z = torch.randn(64, objective.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert mine.loss == pytest.approx(float(objective(z).min()), rel=1e-6)
    assert out["ggl-l2"].loss <= mine.loss  # a search beats 64 random draws of the same prior


def test_readme_shows_the_example_attacker_verbatim():
    readme = (EXAMPLE.parent.parent / "docs" / "extending.md").read_text()  # moved from the README (issue 25)
    code = EXAMPLE.read_text()
    assert code[code.index("import time"):] in readme
