"""The attacker: label inference, batched == one-at-a-time losses, search beats the prior, adaptive mode."""
from __future__ import annotations

import pytest
import torch

from _attack_fixtures import TinyPrior, client_gradient, make_observation, one_torch_thread  # noqa: F401
from ggl.attack import GGLObjective, attack, infer_labels, prior_samples
from ggl.attack.objective import kl_latent, match_loss
from ggl.attack.schema import AttackConfig
from ggl.audit.evaluate import Evaluator
from ggl.defenses.quantize import quantize_update


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- labels

def test_idlg_label_inference_batch1_every_class_and_defence():
    for label in range(10):
        x, y = _images(1, seed=label), torch.tensor([label])
        assert infer_labels(make_observation(x, y)).tolist() == [label]
        for bits in (4, 2):
            q = make_observation(x, y, transform=lambda g, b=bits: quantize_update(g, b)[0])
            assert infer_labels(q).tolist() == [label], f"label {label} lost at {bits} bits"


def test_label_inference_from_a_weight_delta():
    x, y = _images(1, seed=3), torch.tensor([6])
    obs = make_observation(x, y, transform=lambda g: [-0.1 * t for t in g])  # one SGD step as a delta
    obs.kind, obs.local_steps = "delta", 1
    assert infer_labels(obs).tolist() == [6]
    obs.kind = "gradient"  # read as a gradient, the sign flips and the answer is wrong
    assert infer_labels(obs).tolist() != [6]


def test_count_based_label_inference_batch4():
    G = TinyPrior()
    y = torch.tensor([1, 1, 7, 3])
    x = G(torch.randn(4, 8, generator=torch.Generator().manual_seed(5)), y)
    obs = make_observation(x, y)
    model = obs.build_model()
    probes = prior_samples(G, 64, 10, seed=0)
    assert infer_labels(obs, model, probes).tolist() == [1, 1, 3, 7]
    y2 = torch.tensor([0, 4, 4, 4])
    obs2 = make_observation(G(torch.randn(4, 8, generator=torch.Generator().manual_seed(6)), y2), y2)
    assert infer_labels(obs2, model, probes).tolist() == [0, 4, 4, 4]


# ------------------------------------------------------------------------------------------- losses

def _objective(G, z_true, label, dtype=torch.float32, defenses=(), transform=None, **kw):
    from ggl.models import build_model

    y = torch.tensor([label])
    G = G.to(dtype)
    x = G(z_true.to(dtype), y)
    model = build_model("lenet", 1, 10, init="dlg", seed=0).to(dtype)
    grads = client_gradient(model, x, y)
    obs = make_observation(x.float(), y, defenses=defenses)
    obs.state = {k: v.clone() for k, v in model.state_dict().items()}
    obs.update = transform(grads) if transform else grads
    return GGLObjective(obs, G, y, model=model, **kw)


def test_batched_and_one_at_a_time_give_the_same_losses():
    z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    cands = torch.randn(24, 8, generator=torch.Generator().manual_seed(2)) * 1.5
    q4 = [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]
    # float64 throughout: the two paths compute the same numbers with different kernels, whose float32
    # rounding differs by CPU (AVX-512 vs AVX2); in float64 that difference is far below the tolerance, and
    # a quantized coordinate cannot sit within rounding error of a level boundary in one mode only
    cases = [{}, {"loss": "cosine"}, {"kl_weight": 0.5},
             {"adaptive": True, "defenses": q4, "transform": lambda g: quantize_update(g, 4)[0]}]
    for kw in cases:
        obj = _objective(TinyPrior(), z_true, 3, dtype=torch.float64, **dict(kw))
        z = cands.to(torch.float64)
        with torch.no_grad():
            a, b = obj(z, "batched"), obj(z, "loop")
        assert a.shape == b.shape == (24,)
        assert (a > 0).all()
        rel = ((a - b).abs() / b.abs()).max().item()
        assert rel <= 1e-4, f"{kw}: batched vs loop relative difference {rel:.2e}"


def test_an_evaluation_in_chunks_gives_the_whole_populations_losses_and_gradients():
    """Materialised trial updates go through the defence and the loss a few candidates at a time (cache):
    the same losses, in the same order, and the same gradients for the Adam phase."""
    z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    q4 = [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]
    obj = _objective(TinyPrior(), z_true, 3, dtype=torch.float64, adaptive=True, defenses=q4,
                     transform=lambda g: quantize_update(g, 4)[0])
    # the quantizer alone: factored without a gradient; with one (here) the updates are materialised, in chunks
    assert obj.factored_trial and obj.defense.quantizer is not None
    z = (torch.randn(11, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5).requires_grad_(True)
    results = []
    for chunk in (1 << 30, 4):
        obj.chunk = chunk
        loss = obj(z)
        results.append((loss.detach(), torch.autograd.grad(loss.sum(), z)[0]))
    (whole, d_whole), (chunked, d_chunked) = results
    assert d_whole.abs().max() > 0
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(d_chunked, d_whole, rtol=1e-10, atol=1e-12 * float(d_whole.abs().max()))


def test_the_attacker_replays_a_multi_step_delta_exactly_batched_or_not():
    from ggl.attack.trial import ClientSimulator
    from ggl.fl.client import train_client

    # float64: the batched and the looped replay use different kernels, whose float32 rounding is CPU-dependent
    G = TinyPrior().double()
    y = torch.tensor([2, 5])
    x = G(torch.randn(2, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64), y)
    obs = make_observation(x.float(), y)
    model = obs.build_model().double()
    sent = train_client(model, {k: v.detach() for k, v in model.named_parameters()}, x, y, client_id=0, round=0,
                        seed=0, lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=8, local_steps=3,
                        data_gen=torch.Generator().manual_seed(0))
    assert sent.kind == "delta"
    obs.kind, obs.local_steps, obs.lr, obs.momentum, obs.weight_decay = "delta", 3, 0.1, 0.9, 1e-3
    obs.local_batch_size, obs.update = 8, sent.tensors
    sim = ClientSimulator(model, obs)
    for t_sim, t_sent in zip(sim.update(x, y), sent.tensors):  # at the true images: the client's delta
        torch.testing.assert_close(t_sim, t_sent, rtol=1e-9, atol=1e-9 * float(t_sent.abs().max()))
    cands = G(torch.randn(6, 8, dtype=torch.float64), y.repeat(3)).view(3, 2, 1, 32, 32)
    batched = sim.batched(cands, y)
    for p in range(3):
        for t_b, t_l in zip(batched, sim.update(cands[p], y)):
            torch.testing.assert_close(t_b[p], t_l, rtol=1e-9, atol=1e-9 * float(t_l.abs().max()))


def test_kl_regulariser_is_zero_for_standard_normal_statistics_and_grows_away():
    z = torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(0))
    assert kl_latent(z).item() < 1e-2
    assert kl_latent(3 * z + 1).item() > 1.0


def test_match_loss_l2_is_the_layer_average_of_squared_distances():
    target = [torch.zeros(2, 2), torch.zeros(3)]
    trial = (torch.ones(1, 2, 2), torch.full((1, 3), 2.0))
    assert match_loss(trial, target, "l2").item() == (4 + 12) / 2
    assert abs(match_loss((torch.ones(1, 2, 2), torch.ones(1, 3)), [torch.ones(2, 2), torch.ones(3)], "cosine").item()) < 1e-6


# ------------------------------------------------------------------------------------------- adaptive

CHAINS = {
    "q2": [{"name": "quantize", "bits": 2, "rounding": "nearest", "range": "global"}],
    "q4-per-tensor": [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "per_tensor"}],
    "clip+q4": [{"name": "clip", "max_norm": 0.05}, {"name": "quantize", "bits": 4}],
    "top10%": [{"name": "topk", "fraction": 0.1}],
    "sign": [{"name": "sign"}],
}


def _client_chain(tensors, chain):
    """What the client sends: the chain through the federation's own callbacks."""
    from ggl.defenses import parse_defense
    from ggl.fl.callbacks import apply_defenses, build_defense_callbacks
    from ggl.fl.update import ClientUpdate

    specs = [parse_defense(dict(d), "d") for d in chain]
    update = ClientUpdate(client_id=0, round=0, tensors=list(tensors), names=[str(i) for i in range(len(tensors))],
                          num_samples=1, kind="gradient", bits=0)
    return apply_defenses(build_defense_callbacks(specs), None, None, update).tensors


@pytest.mark.parametrize("chain", list(CHAINS))
def test_adaptive_loss_is_zero_at_the_true_latent_and_the_non_adaptive_is_not(chain):
    from ggl.models import build_model

    G = TinyPrior().double()
    z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = torch.tensor([4])
    x = G(z_true, y)
    model = build_model("lenet", 1, 10, init="dlg", seed=0).double()
    obs = make_observation(x.float(), y, defenses=CHAINS[chain])
    obs.state = {k: v.clone() for k, v in model.state_dict().items()}
    obs.update = _client_chain(client_gradient(model, x, y), CHAINS[chain])
    for mode in ("batched", "loop"):
        adaptive = GGLObjective(obs, G, y, adaptive=True, evaluation=mode, model=model)
        plain = GGLObjective(obs, G, y, adaptive=False, evaluation=mode, model=model)
        with torch.no_grad():
            at_truth, unaware = adaptive(z_true).item(), plain(z_true).item()
        assert unaware > 1e-9, "the defended update differs from the raw trial update"
        assert at_truth <= 1e-12 * unaware, f"{mode}: adaptive loss at z* = {at_truth} (want 0)"
        # gradients pass the defence (straight-through where it is not differentiable)
        z = (z_true + 0.3).clone().requires_grad_(True)
        adaptive(z).sum().backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_adaptive_attacker_refuses_a_defence_it_cannot_model():
    from ggl.attack.trial import DefenseModel
    from ggl.core.errors import UserError

    assert not DefenseModel([{"name": "noise", "std": 0.1}]).active  # zero-mean noise: expectation
    with pytest.raises(UserError):
        DefenseModel([{"name": "topk", "fraction": 0.1}])  # the mask needs the observed update


# ------------------------------------------------------------------------------------------- search

def test_a_generation_drawn_at_once_is_what_cmaes_ask_draws():
    import numpy as np
    from cmaes import CMA

    from ggl.attack.search import ask_generation

    opt, twin = (CMA(mean=np.zeros(16), sigma=0.3, population_size=6, seed=3) for _ in range(2))
    for _ in range(4):  # through a few covariance updates: from the same state, the same candidates
        fast = ask_generation(opt, 6)
        slow = np.stack([twin.ask() for _ in range(6)])
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)
        told = [(x, float((x ** 2).sum() + 3 * x[0])) for x in fast]
        opt.tell(list(told))
        twin.tell(list(told))  # the same solutions, so both stay in the same state
    assert opt.generation == 4


def _scores_vs_baseline(cfg, seed=0):
    G = TinyPrior()
    ev = Evaluator()
    gains = []
    for k, label in enumerate((2, 8)):
        z_true = torch.randn(1, 8, generator=torch.Generator().manual_seed(100 + k))
        y = torch.tensor([label])
        x = G(z_true, y)
        res = attack(make_observation(x, y), G, cfg, seed=seed + k)
        assert res.labels.tolist() == [label]
        assert res.curve == sorted(res.curve, reverse=True) and len(res.curve) > 0
        base = ev.baseline(G, res.labels, seed=seed + k)
        gains.append(ev.scores(res.images, x)[0]["psnr"] - ev.scores(base, x)[0]["psnr"])
    return gains


def test_cmaes_attack_beats_the_prior_only_baseline():
    cfg = AttackConfig(optimizer="cmaes", population=16, generations=25, sigma=1.0)
    assert min(_scores_vs_baseline(cfg)) > 3.0


def test_adam_and_cmaes_adam_beat_the_prior_only_baseline():
    assert min(_scores_vs_baseline(AttackConfig(optimizer="adam", adam_steps=40, adam_restarts=4, adam_lr=0.1))) > 3.0
    cfg = AttackConfig(optimizer="cmaes_adam", population=12, generations=8, adam_steps=15, adam_restarts=3, sigma=1.0,
                       adam_lr=0.05)
    assert min(_scores_vs_baseline(cfg)) > 3.0
