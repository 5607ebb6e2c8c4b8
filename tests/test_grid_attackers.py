"""The grid attackers (issue 26) at a *trained* ReLU CNN, where a victim's min/max grid and a trial's
own differ and most of a one-image gradient is exactly 0: the payload's public grid is the client's,
the observed-grid quantizer reproduces the payload bit for bit and puts other images on the payload's
levels, the decoded update is exactly 0 where the gradient is, the cell loss is exactly 0 at the
truth, each defence-aware loss ranks the true image and a slight perturbation of it first, and every
grid attacker refuses, in one line, an observation without a grid it can use."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _attack_fixtures import TinyPrior, client_gradient, one_torch_thread  # noqa: F401
from ggl.attack.attackers import build_portfolio, get_attacker, run_portfolio
from ggl.attack.grid import decoded_observation, observed_grid
from ggl.attack.observation import Observation
from ggl.attack.schema import AttackConfig
from ggl.defenses.qsgd import qsgd_quantize
from ggl.defenses.quantize import grid_intervals, quantize_update
from ggl.defenses.sign import sign_update
from ggl.core.errors import UserError
from ggl.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q4 = {"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}
QUANTIZERS = {
    "q4": Q4,
    "q4-per-tensor": {**Q4, "range": "per_tensor"},
    "q3-seedgrid": {**Q4, "bits": 3, "grid": "seed"},
}
STOCHASTIC = {"q4-stochastic": {**Q4, "rounding": "stochastic"},
              "q2-stochastic-per-tensor": {**Q4, "bits": 2, "rounding": "stochastic", "range": "per_tensor"}}
SIGN = {"name": "sign"}
QSGD = {"name": "qsgd", "levels": 4, "bucket_size": 512}
VICTIMS = range(4)
CFG = AttackConfig(optimizer="cmaes", population=12, generations=20, sigma=1.0)


@pytest.fixture(scope="module")
def trained():
    """The ReLU CNN after 40 SGD steps on prior images (its gradients' ranges are no longer the init's)."""
    torch.set_num_threads(1)
    G = TinyPrior()
    model = build_model("cnn", 1, 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        y = torch.randint(0, 10, (32,), generator=gen)
        loss = F.cross_entropy(model(G(torch.randn(32, 8, generator=gen), y)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return G, model


def _send(g, spec, k: int):
    if spec["name"] == "quantize":
        gen = torch.Generator().manual_seed(300 + k)  # stochastic rounding's draws
        return quantize_update(g, spec["bits"], spec["rounding"], spec["range"], generator=gen,
                               grid=spec.get("grid", "project"))[0]
    if spec["name"] == "sign":
        return sign_update(g)[0]
    return qsgd_quantize(g, spec["levels"], spec["bucket_size"], torch.Generator().manual_seed(300 + k))[0]


def _victim(trained, k: int, spec):
    """Victim k: a prior image of class k (seeded latent z), its FedSGD gradient g at the trained model, and
    the observation of g sent through ``spec``."""
    G, model = trained
    y = torch.tensor([k % 10])
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(200 + k))
    g = client_gradient(model, G(z, y), y)
    obs = Observation(arch="cnn", channels=1, num_classes=10,
                      state={n: v.detach().clone() for n, v in model.state_dict().items()},
                      names=[n for n, _ in model.named_parameters()], update=_send(g, spec, k), kind="gradient",
                      batch_size=1, local_steps=1, lr=0.1, local_batch_size=1, defenses=[dict(spec)],
                      obs_id=f"victim{k}")
    return z, y, g, obs


def _batch(g):
    return [t.unsqueeze(0) for t in g]


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


# ------------------------------------------------------------------------------------------- the premise

def test_at_the_trained_model_the_victims_grid_is_not_a_trials_own(trained):
    """Most of the victim's gradient is exactly 0 and its zero cell is sent off 0; other images of its class
    have ranges, hence steps, of their own (what the adaptive attacker quantizes them on)."""
    G, model = trained
    intervals = grid_intervals(4)
    for k in VICTIMS:
        _, y, g, obs = _victim(trained, k, Q4)
        flat = _flat(g)
        assert float((flat == 0).double().mean()) > 0.5
        (lo, step), = [observed_grid(obs).ranges[0]]
        assert float(torch.round(-lo / step) * step + lo) != 0.0
        others = G(torch.randn(8, 8, generator=torch.Generator().manual_seed(7 + k)), y.repeat(8))
        ratios = [float((_flat(client_gradient(model, x[None], y)).aminmax()[1] -
                         _flat(client_gradient(model, x[None], y)).aminmax()[0]) / intervals / step) for x in others]
        assert max(abs(r - 1) for r in ratios) > 0.05, ratios


# ------------------------------------------------------------------------------------------- the public grid

@pytest.mark.parametrize("setting", list(QUANTIZERS))
def test_the_payloads_grid_is_the_clients_and_reproduces_the_payload_bit_for_bit(trained, setting):
    spec = QUANTIZERS[setting]
    intervals = grid_intervals(spec["bits"], spec.get("grid", "project"))
    for k in VICTIMS:
        _, _, g, obs = _victim(trained, k, spec)
        grid = observed_grid(obs)
        ranges = [_flat(g)] if spec["range"] == "global" else [t.reshape(-1) for t in g]
        derived = grid.ranges[:1] if spec["range"] == "global" else grid.ranges
        for r, (lo, step) in zip(ranges, derived):
            assert torch.equal(lo, r.min()) and torch.equal(step, (r.max() - r.min()) / intervals)
        sent = grid.quantize(_batch(g))
        assert all(torch.equal(s[0], o) for s, o in zip(sent, obs.update)), f"victim {k}"


def test_sign_scales_are_the_clients_and_reproduce_the_payload(trained):
    for k in VICTIMS:
        _, _, g, obs = _victim(trained, k, SIGN)
        grid = observed_grid(obs)
        assert all(torch.equal(s, t.abs().mean()) for s, t in zip(grid.scales, g))
        assert all(torch.equal(s[0], o) for s, o in zip(grid.quantize(_batch(g)), obs.update))


def test_qsgd_norms_are_read_off_the_payload(trained):
    for k in VICTIMS:
        _, _, g, obs = _victim(trained, k, QSGD)
        grid = observed_grid(obs)
        flat = _flat(g).double()
        flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 512)]).view(-1, 512)
        norms = flat.norm(dim=1)
        assert bool(grid.known.any())
        # float32 norms, rounded twice on the way (the payload's values, then the unit read off them)
        torch.testing.assert_close(grid.norms[grid.known], norms[grid.known], rtol=4 * 2 ** -23, atol=0)


@pytest.mark.parametrize("setting", list(QUANTIZERS))
def test_the_observed_grid_puts_other_images_on_the_payloads_levels(trained, setting):
    """A trial quantized on the payload's grid takes only the payload's levels (on its own grid it would not)."""
    G, model = trained
    spec = QUANTIZERS[setting]
    intervals = grid_intervals(spec["bits"], spec.get("grid", "project"))
    for k in VICTIMS:
        _, y, _, obs = _victim(trained, k, spec)
        grid = observed_grid(obs)
        x = G(torch.randn(1, 8, generator=torch.Generator().manual_seed(50 + k)), y)
        sent = grid.quantize(_batch(client_gradient(model, x, y)))
        for s, (lo, step) in zip(sent, grid.ranges):
            levels = torch.arange(intervals + 1, dtype=lo.dtype) * step + lo
            assert bool(torch.isin(s, levels).all()), f"victim {k}"


# ------------------------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("setting", list(QUANTIZERS))
def test_the_decoded_update_is_exactly_zero_where_the_gradient_is(trained, setting):
    spec = QUANTIZERS[setting]
    sent_off_zero = 0
    for k in VICTIMS:
        _, _, g, obs = _victim(trained, k, spec)
        decoded = decoded_observation(obs).update
        for t, d, o in zip(g, decoded, obs.update):
            zero = t == 0
            assert bool((d[zero] == 0).all()), f"victim {k}"
            sent_off_zero += int((o[zero] != 0).sum())
            assert torch.equal(d[d != o], torch.zeros_like(d[d != o]))  # only the zero cell changes, to 0
            assert o[d != o].unique().numel() <= 1  # ... one level of it
    assert sent_off_zero > 0  # the payload sent them off 0: decoding changed something


# ------------------------------------------------------------------------------------------- the cell loss

@pytest.mark.parametrize("setting", list(QUANTIZERS) + ["sign"])
def test_the_cell_loss_is_exactly_zero_at_the_truth(trained, setting):
    spec = SIGN if setting == "sign" else QUANTIZERS[setting]
    for k in VICTIMS:
        _, _, g, obs = _victim(trained, k, spec)
        assert float(observed_grid(obs).cell_loss(_batch(g))[0]) == 0.0, f"victim {k}"


# ------------------------------------------------------------------------------------------- the losses

RANKED = [(name, setting) for name in ("ggl-l2-observed-grid", "ggl-cosine-observed-grid", "ggl-cell",
                                      "inverting-gradients-observed-grid", "inverting-gradients-cell")
          for setting in list(QUANTIZERS) + ["sign"]] + [("ggl-cell", "qsgd"), ("inverting-gradients-cell", "qsgd")] + [
          (name, setting) for name in ("ggl-cosine-decoded",) for setting in QUANTIZERS]


@pytest.mark.parametrize("name,setting", RANKED)
def test_each_defence_aware_loss_ranks_the_truth_and_a_perturbation_first(trained, name, setting):
    """On 4 victims, the true image and a slightly perturbed one (latent + 0.1 N(0, 1)) score below each of
    32 other prior images of the same class."""
    from ggl.attack import GGLObjective

    G, model = trained
    spec = {"sign": SIGN, "qsgd": QSGD}.get(setting) or QUANTIZERS[setting]
    attacker = get_attacker(name)
    for k in VICTIMS:
        z, y, _, obs = _victim(trained, k, spec)
        if name.endswith("-decoded"):
            objective = GGLObjective(decoded_observation(obs), G, y, loss=attacker.loss_kind, model=model)
        else:
            objective = attacker.objective(obs, G, CFG, y, model)
        near = z + 0.1 * torch.randn(1, 8, generator=torch.Generator().manual_seed(5 + k))
        others = torch.randn(32, 8, generator=torch.Generator().manual_seed(7 + k))
        with torch.no_grad():
            losses = objective(torch.cat([z, near, others])).double()
        assert float(losses[:2].max()) < float(losses[2:].min()), f"victim {k}: {losses[:2].tolist()} vs " \
                                                                 f"{float(losses[2:].min())}"


# ------------------------------------------------------------------------------------------- refusals

NEW = ["ggl-l2-observed-grid", "ggl-cosine-observed-grid", "ggl-cell", "ggl-l2-decoded", "ggl-cosine-decoded",
       "inverting-gradients-decoded", "inverting-gradients-observed-grid", "inverting-gradients-cell"]
IG_OPTIONS = {name: {"steps": 2, "restarts": 1} for name in NEW if name.startswith("inverting-gradients")}


DECODED = ["ggl-l2-decoded", "ggl-cosine-decoded", "inverting-gradients-decoded"]


@pytest.mark.parametrize("chain,refused,why", [
    ([], NEW, "float32"),                                                       # no defence: no grid
    ([{**Q4, "bits": 32}], NEW, "float32"),
    ([{**Q4, "bits": 2, "rounding": "stochastic"}], NEW, "ggl-eot"),            # its likelihood is ggl-eot's
    ([{"name": "topk", "fraction": 0.1}], NEW, "does not end in a quantizer"),
    ([Q4, {"name": "noise", "std": 0.01}], NEW, "does not end in a quantizer"),
    ([{"name": "topk", "fraction": 0.1}, Q4], NEW, "mask"),                     # not observable after quantizing
    ([SIGN], DECODED, "nothing to decode"),                                     # no cell holds 0
    ([QSGD], ["ggl-l2-observed-grid", "ggl-cosine-observed-grid", "inverting-gradients-observed-grid"] + DECODED,
     "unbiased|nothing to decode"),
    ([{"name": "clip", "max_norm": 1.0}, Q4], [], ""),
])
def test_grid_attackers_refuse_what_they_cannot_use_in_one_line(chain, refused, why):
    import re

    G = TinyPrior()
    y = torch.tensor([3])
    model = build_model("cnn", 1, 10, seed=0)
    g = client_gradient(model, G(torch.randn(1, 8, generator=torch.Generator().manual_seed(0)), y), y)
    sent = _send(g, chain[-1], 0) if chain and chain[-1]["name"] in ("quantize", "sign", "qsgd") else g
    obs = Observation(arch="cnn", channels=1, num_classes=10, state=model.state_dict(),
                      names=[n for n, _ in model.named_parameters()], update=sent, kind="gradient", batch_size=1,
                      local_steps=1, lr=0.1, local_batch_size=1, defenses=[dict(d) for d in chain], obs_id="r")
    for name in NEW:
        reason = get_attacker(name).refusal(obs)
        if name in refused:
            assert isinstance(reason, str) and re.search(why, reason) and "\n" not in reason, (name, chain, reason)
            with pytest.raises(UserError, match="refuses observation 'r'"):
                get_attacker(name)(obs, G, CFG, seed=0)
        else:
            assert reason is None, (name, chain, reason)


@pytest.mark.parametrize("setting", list(QUANTIZERS) + ["sign"])
def test_the_grid_inverting_gradients_see_the_payload_at_the_true_pixels(trained, setting):
    """Its pixel-space trial update at the victim's own pixels, through its defence model, is the (decoded)
    payload bit for bit; plain inverting-gradients' trial there is not the payload. inverting-gradients-cell's
    loss is 0 there (to float32 rounding at a cell's edge), and not at noise."""
    from ggl.attack.attackers.inverting_gradients import PixelParametrisation

    G, model = trained
    spec = SIGN if setting == "sign" else QUANTIZERS[setting]
    pixels = PixelParametrisation(1, 32)
    for k in VICTIMS:
        z, y, _, obs = _victim(trained, k, spec)
        truth = G(z, y).reshape(1, -1)
        with torch.no_grad():
            on_grid = get_attacker("inverting-gradients-observed-grid").objective(obs, pixels, CFG, y, model)
            trial = on_grid.defense.batched(on_grid.sim.batched(on_grid.images(truth), on_grid.labels))
            assert all(torch.equal(t[0], o) for t, o in zip(trial, on_grid.target)), f"victim {k}"
            plain = get_attacker("inverting-gradients").objective(obs, pixels, CFG, y, model)
            trial = plain.sim.batched(plain.images(truth), plain.labels)
            assert plain.defense is None and not all(torch.equal(t[0], o) for t, o in zip(trial, obs.update))
            noise = torch.rand(4, truth.shape[1], generator=torch.Generator().manual_seed(k))
            cell = get_attacker("inverting-gradients-cell").objective(obs, pixels, CFG, y, model)
            # 0 up to the trial's float32 rounding at a cell's edge (~1e-7 of a step, squared)
            assert float(cell(truth)) < 1e-9 * float(cell(noise).min()), f"victim {k}"


def test_the_portfolio_records_refusals_and_runs_the_grid_attackers(trained):
    """One q4 victim, every grid attacker through run_portfolio (tiny budget); a decoded attacker is its base
    attacker on the decoded observation, the same search to the bit."""
    G, model = trained
    _, y, _, obs = _victim(trained, 1, Q4)
    cfg = AttackConfig(optimizer="cmaes", population=6, generations=2, sigma=1.0)
    attackers = build_portfolio(NEW, IG_OPTIONS)
    out = run_portfolio(attackers, obs, G, cfg, seed=1)
    assert list(out) == NEW and not any(isinstance(v, str) for v in out.values())
    assert all(r.images.shape == (1, 1, 32, 32) and r.labels.tolist() == y.tolist() for r in out.values())
    base = get_attacker("ggl-cosine")(decoded_observation(obs), G, cfg, seed=1)
    assert base.loss == out["ggl-cosine-decoded"].loss and torch.equal(base.images, out["ggl-cosine-decoded"].images)
    obs.defenses = []
    refused = run_portfolio(attackers, obs, G, cfg, seed=1)
    assert all(isinstance(v, str) and "float32" in v for v in refused.values())


def _factored_setup(trained, setting, attacker, monkeypatch, kernel):
    """(objective, x, z, calls): attacker's float64 objective on a victim's payload at the trained model, 4
    candidates x (0: the victim), kernel (a factored one) counted in ``calls`` and taken by both linear layers."""
    import copy

    import ggl.attack.attackers.eot as eot_module
    import ggl.attack.factored as factored_module
    import ggl.attack.grid as grid_module
    import ggl.attack.objective as objective_module

    G, model = trained
    model = copy.deepcopy(model).double()
    spec = QUANTIZERS.get(setting) or STOCHASTIC.get(setting) or {"sign": SIGN}[setting]
    y = torch.tensor([3])
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(11))
    x = G(z, y.repeat(4)).double().unsqueeze(1)  # (P, 1, 1, 32, 32); candidate 0 is the victim
    # candidate 3: noise, whose larger gradient leaves the payload's range (codes 0 and top clamp)
    x[3] = torch.rand(x[3].shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    obs = Observation(arch="cnn", channels=1, num_classes=10, state=model.state_dict(),
                      names=[n for n, _ in model.named_parameters()],
                      update=_send(client_gradient(model, x[0], y), spec, 0), kind="gradient", batch_size=1,
                      local_steps=1, lr=0.1, local_batch_size=1, defenses=[dict(spec)], obs_id="f64")
    objective = attacker.objective(obs, G, CFG, y, model)
    assert objective.factored_trial
    calls = []
    real = getattr(factored_module, kernel)
    monkeypatch.setattr(factored_module, "BLOCKWISE_MIN", 0)  # the small layer too (by default materialised)
    for module in (objective_module, grid_module, eot_module):
        if hasattr(module, kernel):
            monkeypatch.setattr(module, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    return objective, x, torch.zeros(4, objective.dim, dtype=torch.float64), calls


@pytest.mark.parametrize("setting", list(STOCHASTIC))
def test_the_eot_likelihood_of_factored_linear_gradients_equals_the_chains_dense_loss(trained, setting, monkeypatch):
    """ggl-eot's exact stochastic-rounding likelihood takes its linear layers' outer products blockwise
    (``factored.tent_kernel`` through ``outer_loss``): the losses and the gradients in the images of the
    chain's dense loss on the materialised updates, float64, at candidates on, off and outside the grid."""
    objective, x, zz, calls = _factored_setup(trained, setting, get_attacker("ggl-eot"), monkeypatch, "outer_loss")
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        got = objective.image_losses(x, zz)
        dx_got, = torch.autograd.grad(got.sum(), x)
        assert len(calls) == 2  # both linear layers took the blockwise path
        objective.factored_trial = False
        want = objective.image_losses(x, zz)
        dx_want, = torch.autograd.grad(want.sum(), x)
    got, want = got.detach(), want.detach()
    assert (want[1:] > want[0]).all()  # the victim's image is the likeliest
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert (dx_want.flatten(1).norm(dim=1) > 0).all()
    torch.testing.assert_close(dx_got, dx_want, rtol=1e-9, atol=1e-9 * float(dx_want.abs().max()))


def _factored_against_the_loop(trained, setting, attacker, monkeypatch, kernel):
    """float64 losses of 4 candidates (0: the victim) by the factored batched path, the reference loop and the
    dense batched path, after checking that both linear layers went through ``kernel`` (a factored one)."""
    objective, x, zz, calls = _factored_setup(trained, setting, attacker, monkeypatch, kernel)
    with torch.no_grad():
        got = objective.image_losses(x, zz)
        want = torch.cat([objective.image_loss_reference(x[i], zz[i:i + 1]) for i in range(4)])
        objective.factored_trial = False
        dense = objective.image_losses(x, zz)
    assert len(calls) == 2  # both linear layers took the factored path
    assert (want[1:] > want[0]).all()  # the victim's image scores best
    return got, want, dense


@pytest.mark.parametrize("name, decoded", [("ggl-cell", None), ("ggl-l2-observed-grid", True),
                                           ("ggl-l2-observed-grid", False)])
@pytest.mark.parametrize("setting", ["q4", "q4-per-tensor", "q3-seedgrid", "sign"])
def test_adams_gradient_through_the_factored_grid_losses_equals_autograd_on_the_dense_updates(
        trained, setting, name, decoded, monkeypatch):
    """With a gradient (the Adam phase), ggl-cell and the observed-grid L2 take their linear layers through one
    autograd node over the outer products (``factored.outer_loss``): the same gradient in the images as autograd
    through the materialised updates (batched dense path and reference loop; the observed grid straight
    through), float64, at candidates inside, off and outside the payload's range."""
    import dataclasses

    attacker = get_attacker(name)
    if decoded is not None:
        attacker = dataclasses.replace(attacker, decoded=decoded)
    objective, x, zz, calls = _factored_setup(trained, setting, attacker, monkeypatch, "outer_loss")
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = objective.image_losses(x, zz)
        got, = torch.autograd.grad(loss.sum(), x)
        assert len(calls) == 2  # both linear layers took the one-node path
        want, = torch.autograd.grad(sum(objective.image_loss_reference(x[i], zz[i:i + 1]).sum() for i in range(4)), x)
        objective.factored_trial = False
        dense_loss = objective.image_losses(x, zz)
        dense, = torch.autograd.grad(dense_loss.sum(), x)
    assert len(calls) == 2
    loss, dense_loss = loss.detach(), dense_loss.detach()
    torch.testing.assert_close(loss, dense_loss, rtol=1e-9, atol=1e-12 * float(dense_loss.abs().max()))
    assert (want[1:].flatten(1).norm(dim=1) > 0).all()  # the victim's own cells hold it (ggl-cell: loss 0)
    for g in (got, dense):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


@pytest.mark.parametrize("decoded", [True, False])
@pytest.mark.parametrize("name", ["ggl-l2-observed-grid", "ggl-cosine-observed-grid"])
@pytest.mark.parametrize("setting", ["q4", "q4-per-tensor", "q3-seedgrid", "sign"])
def test_the_observed_grid_loss_of_factored_linear_gradients_equals_the_reference_loop(trained, setting, name,
                                                                                     decoded, monkeypatch):
    """The observed-grid search quantizes and matches its linear layers' gradients as outer products on the
    payload's grid (``ggl.attack.factored.FixedGrid``, decoded or not): the reference loop's losses, float64."""
    import dataclasses

    attacker = dataclasses.replace(get_attacker(name), decoded=decoded)
    got, want, dense = _factored_against_the_loop(trained, setting, attacker, monkeypatch, "outer_quantized_match")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10 * float(want.abs().max()))
    torch.testing.assert_close(dense, want, rtol=1e-9, atol=1e-10 * float(want.abs().max()))


@pytest.mark.parametrize("setting", ["q4", "q4-per-tensor", "q3-seedgrid", "sign"])
def test_the_cell_loss_of_factored_linear_gradients_equals_the_reference_loop(trained, setting, monkeypatch):
    """ggl-cell reads its linear layers' cells blockwise from the outer products' factors
    (``factored.outer_cell_distance``; sign's half-lines and scale: ``sign_cell_kernel`` through ``outer_loss``
    and the factors' L1 norms): the reference loop's losses, float64."""
    kernel = "outer_loss" if setting == "sign" else "outer_cell_distance"
    got, want, dense = _factored_against_the_loop(trained, setting, get_attacker("ggl-cell"), monkeypatch, kernel)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
    torch.testing.assert_close(dense, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")


def _grid_losses(trained, name: str, device: str):
    """float64 losses of 4 candidates (0: the victim) under attacker ``name``'s objective on ``device``."""
    import copy
    import dataclasses

    G, model = trained
    model = copy.deepcopy(model).double()
    y = torch.tensor([3])
    x = G(torch.randn(4, 8, generator=torch.Generator().manual_seed(11)), y.repeat(4)).double().unsqueeze(1)
    obs = Observation(arch="cnn", channels=1, num_classes=10, state=model.state_dict(),
                      names=[n for n, _ in model.named_parameters()],
                      update=_send(client_gradient(model, x[0], y), Q4, 0), kind="gradient", batch_size=1,
                      local_steps=1, lr=0.1, local_batch_size=1, defenses=[dict(Q4)], obs_id="f64")
    objective = get_attacker(name).objective(obs, G, dataclasses.replace(CFG, device=device), y, model)
    zz = torch.zeros(4, objective.dim, dtype=torch.float64)
    with torch.no_grad():
        return objective.image_losses(x.to(device), zz.to(device))


@needs_cuda
@pytest.mark.parametrize("name", ["ggl-l2-observed-grid", "ggl-cosine-observed-grid", "ggl-cell"])
def test_grid_attackers_on_cuda_give_the_cpu_losses_in_float64(trained, name):
    gpu = _grid_losses(trained, name, "cuda")
    assert gpu.device.type == "cuda"
    cpu = _grid_losses(trained, name, "cpu")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12 * float(cpu.abs().max()))


@needs_cuda
def test_every_grid_attacker_searches_on_cuda_with_batched_search_seeds(trained):
    """attack.device=cuda: each grid attacker's two search seeds come back on the CPU, as two searches."""
    G, _ = trained
    _, y, _, obs = _victim(trained, 1, Q4)
    cfg = AttackConfig(optimizer="cmaes_adam", population=6, generations=2, adam_steps=3, adam_restarts=2,
                       sigma=1.0, device="cuda", search_seeds=2)
    attackers = build_portfolio(NEW, IG_OPTIONS)
    out = run_portfolio(attackers, obs, G, cfg, seed=1)
    for name, res in out.items():
        runs = res.runs or [res]
        assert all(r.images.device.type == "cpu" and r.z.device.type == "cpu" for r in runs), name
        if not name.startswith("inverting-gradients"):  # IG's seeds run one after the other in the attack job
            assert len(runs) == 2 and runs[0].loss != runs[1].loss, name
