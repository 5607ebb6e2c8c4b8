"""The batched search's faster kernels compute the same numbers as the plain ones (float64, any CPU):
per-candidate gradients without vmap, the generator's CPU copy, the quantizer's shortcuts."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from _attack_fixtures import make_observation, one_torch_thread  # noqa: F401
from ggl.attack.fast_generator import _ChannelsLast, _FoldConvTranspose2d, _FoldedConditionalNorm, for_batched_search
from ggl.attack.per_candidate import PerCandidateGradients, supports
from ggl.models import build_model
from ggl.models.gan import Generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vmap_grads(model, names, x, y):
    """The reference: each candidate's gradient by torch.func (what evaluation: batched used before)."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xb):
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), y)
    g = vmap(grad(loss), in_dims=(None, 0))(params, x)
    return tuple(g[n] for n in names)


@pytest.mark.parametrize("arch,batch", [("lenet", 1), ("lenet", 3), ("cnn", 1), ("cnn", 2)])
def test_per_candidate_gradients_equal_vmap_and_carry_the_image_gradient(arch, batch):
    model = build_model(arch, 1, 10, init="dlg" if arch == "lenet" else "default", seed=0).double()
    names = [n for n, _ in model.named_parameters()]
    assert supports(model)
    x = torch.rand(4, batch, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 7, 1][:batch])
    fast = PerCandidateGradients(model, names)
    if arch == "cnn":  # its copy pools before each ReLU (relu and max commute, and so do their gradients)
        assert [type(m) for m in fast.model.features][1:3] == [nn.MaxPool2d, nn.ReLU]
    with torch.no_grad():
        got, want = fast(x, y), _vmap_grads(model, names, x, y)
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()), msg=name)
    # the Adam phase differentiates the matching loss through these gradients back to the images
    target = [torch.randn_like(t[0]) for t in want]
    xg = x.clone().requires_grad_(True)
    dx_fast = torch.autograd.grad(sum(((t - g) ** 2).sum() for t, g in zip(fast(xg, y), target)), xg)[0]
    dx_vmap = torch.autograd.grad(sum(((t - g) ** 2).sum() for t, g in zip(_vmap_grads(model, names, xg, y), target)),
                                  xg)[0]
    assert dx_vmap.abs().max() > 0
    torch.testing.assert_close(dx_fast, dx_vmap, rtol=1e-9, atol=1e-12 * float(dx_vmap.abs().max()))


@pytest.mark.parametrize("kind", ["l2", "cosine"])
@pytest.mark.parametrize("arch,batch", [("cnn", 1), ("cnn", 2), ("lenet", 1)])
def test_factored_linear_gradients_give_the_dense_losses_and_image_gradients(arch, batch, kind):
    from ggl.attack.objective import match_loss
    from ggl.attack.per_candidate import OuterSum

    model = build_model(arch, 1, 10, init="dlg" if arch == "lenet" else "default", seed=0).double()
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, batch, 1, 32, 32, dtype=torch.float64, generator=gen).requires_grad_(True)
    y = torch.tensor([3, 7][:batch])
    fast = PerCandidateGradients(model, names)
    dense = fast(x, y)
    # the target: candidate 0's own update, so that its loss is 0 where |t|^2 - 2<t, g> + |g|^2 cancels
    # completely; the other candidates' images differ, and so do their losses
    target = [t[0].detach() for t in dense]
    factored = fast(x, y, factored=True)
    assert any(isinstance(t, OuterSum) for t in factored)
    cache = {}
    got, want = match_loss(factored, target, kind, cache), match_loss(dense, target, kind)
    assert cache  # the target's float64 layers are kept for the next call
    assert (want[1:] > 0).all() and abs(float(want[0])) < 1e-9 * float(want[1:].min())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
    dx_got, = torch.autograd.grad(match_loss(factored, target, kind, cache).sum(), x)
    dx_want, = torch.autograd.grad(want.sum(), x)
    assert dx_want.abs().max() > 0
    torch.testing.assert_close(dx_got, dx_want, rtol=1e-8, atol=1e-10 * float(dx_want.abs().max()))
    for t, d in zip(factored, dense):
        if isinstance(t, OuterSum):
            torch.testing.assert_close(t.dense(), d, rtol=0, atol=0)


def test_per_candidate_path_only_for_nets_whose_candidates_cannot_interact():
    assert not supports(build_model("resnet18", 3, 10, seed=0))  # GroupNorm: a parametrised layer it does not know
    assert not supports(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))  # batch statistics mix candidates
    assert not supports(nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, padding="same")))
    assert supports(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(4 * 16 * 16, 10)))


def _trained_looking_generator(conditional: bool) -> Generator:
    """A small generator with non-trivial running statistics and per-class gains (as after training)."""
    G = Generator(16, 1, 32, 10 if conditional else 0, width=8).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in G.norms:
            norm.bn.running_mean.copy_(torch.randn(norm.bn.num_features, generator=gen, dtype=torch.float64))
            norm.bn.running_var.copy_(torch.rand(norm.bn.num_features, generator=gen, dtype=torch.float64) + 0.5)
            if conditional:
                norm.gain.weight.copy_(torch.randn(norm.gain.weight.shape, generator=gen, dtype=torch.float64))
                norm.bias.weight.copy_(torch.randn(norm.bias.weight.shape, generator=gen, dtype=torch.float64))
            else:
                norm.bn.weight.copy_(torch.randn(norm.bn.num_features, generator=gen, dtype=torch.float64))
    return G.eval().requires_grad_(False)


@pytest.mark.parametrize("conditional", [True, False])
def test_the_generators_cpu_copy_is_the_same_function(conditional):
    G = _trained_looking_generator(conditional)
    fast = for_batched_search(G, torch.device("cpu"))
    kinds = {type(m) for m in fast.modules()}
    assert {_FoldConvTranspose2d, _ChannelsLast, _FoldedConditionalNorm} <= kinds  # the swaps happened
    assert not any(isinstance(m, (_FoldConvTranspose2d, _FoldedConditionalNorm)) for m in G.modules())  # G untouched
    z = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 9, 3, 5, 1]) if conditional else None
    torch.testing.assert_close(fast(z, y), G(z, y), rtol=1e-12, atol=1e-12)
    zg = z.clone().requires_grad_(True)  # and the gradient the Adam phase follows
    torch.testing.assert_close(torch.autograd.grad(fast(zg, y).square().sum(), zg)[0],
                               torch.autograd.grad(G(zg, y).square().sum(), zg)[0], rtol=1e-10, atol=1e-12)


def test_the_generator_is_left_as_it_is_off_the_cpu_or_in_training():
    G = _trained_looking_generator(True)
    assert for_batched_search(G, torch.device("meta")) is G
    assert for_batched_search(G.train(), torch.device("cpu")) is G


def test_the_quantizer_in_place_and_with_amin_amax_gives_the_reference_bit_for_bit():
    from ggl.defenses.quantize import quantize_update

    def reference(tensors, bits):  # the quantizer as it was: min()/max(), out of place
        flat = torch.cat([t.reshape(-1) for t in tensors])
        lo, hi = flat.min(), flat.max()
        step = (hi - lo) / (2 ** bits - 1)
        safe = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.where(step > 0, torch.round((flat - lo) / safe).clamp(0, 2 ** bits - 1) * step + lo, flat)
        return list(torch.split(q, [t.numel() for t in tensors]))

    gen = torch.Generator().manual_seed(0)
    cases = [[torch.randn(50, generator=gen) * 10.0 ** e, torch.randn(3, 4, generator=gen)] for e in (-8, 0, 30)]
    tiny = torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps  # the smallest subnormal
    cases += [[torch.full((5,), 0.25)], [torch.tensor([1.0, -1.0, 1.0])], [torch.tensor([3e38, -3e38])],
              [torch.tensor([0.0, 16 * tiny, 3 * tiny])]]  # a range 16 subnormals wide: the clamp matters
    for tensors in cases:
        for bits in (1, 2, 4, 8, 16):
            want = reference(tensors, bits)
            for grad_mode in (True, False):  # out of place with autograd on, in place without
                with torch.set_grad_enabled(grad_mode):
                    got, _ = quantize_update(tensors, bits)
                for a, b in zip(got, want):  # exactly equal (NaN where the reference has NaN: 3e38 overflows)
                    torch.testing.assert_close(a.reshape(-1), b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("range_mode", ["global", "per_tensor"])
def test_the_quantizer_on_all_candidates_at_once_equals_vmap_of_the_clients_bit_for_bit(range_mode):
    """quantize_candidates (the adaptive search's native batched form) = vmap(quantize_update) per candidate,
    with non-contiguous inputs (quantized in their own layout), a 0-dim parameter, and degenerate candidates
    (a constant update, a NaN) among ordinary ones."""
    from ggl.defenses.quantize import quantize_candidates, quantize_update

    gen = torch.Generator().manual_seed(3)
    conv = torch.randn(5, 4, 3, 2, generator=gen, dtype=torch.float64).permute(0, 3, 1, 2)  # non-contiguous
    bias = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 1e-6
    conv[1], bias[1] = 0.5, 0.5      # a constant candidate: step 0, returned as it is
    conv[2, 0, 0, 0] = float("nan")  # a NaN: that candidate's range is NaN, returned as it is
    tiny = torch.finfo(torch.float64).smallest_normal * torch.finfo(torch.float64).eps  # the smallest subnormal
    conv[3], bias[3] = 0.0, torch.tensor([0.0, 16 * tiny, 3 * tiny, 0.0], dtype=torch.float64)  # clamp matters
    # a 0-dim parameter's update; it holds candidate 0's minimum and candidate 4's maximum (the global range
    # spans the tensors)
    scalar = torch.tensor([-9.0, 0.5, 3.0, 0.0, 7.0], dtype=torch.float64)
    tensors = (conv, bias, scalar)
    for bits in (1, 4, 16):
        for grad_mode in (True, False):
            with torch.set_grad_enabled(grad_mode):
                want = vmap(lambda ts: quantize_update(ts, bits, "nearest", range_mode)[0])(tensors)
                got = quantize_candidates(tensors, bits, range_mode)
            for a, b in zip(got, want):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_the_adaptive_defence_chain_runs_natively_only_when_every_step_has_a_batched_form():
    from ggl.attack.trial import DefenseModel

    observed = (torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64),)
    quantize = {"name": "quantize", "bits": 2}
    native = DefenseModel([{"name": "topk", "fraction": 0.5}, quantize], observed)  # mask + quantize
    assert native.batched_steps is not None
    assert DefenseModel([{"name": "clip", "max_norm": 1.0}, quantize], observed).batched_steps is None  # clip: vmap
    trial = (torch.randn(6, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64),)
    with torch.no_grad():
        torch.testing.assert_close(native.batched(trial)[0], vmap(native.__call__)(trial)[0], rtol=0, atol=0)


class _SharedLayer(nn.Module):
    """A net whose forward applies one layer twice: no single input per candidate for it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(32 * 32, 10)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(torch.sigmoid(self.conv(x)))).flatten(1))


def test_a_layer_applied_twice_falls_back_to_vmap_with_the_right_gradients():
    from ggl.attack.trial import ClientSimulator
    from _attack_fixtures import make_observation

    model = _SharedLayer().double()
    assert supports(model)  # its modules look plain: only the forward tells
    names = [n for n, _ in model.named_parameters()]
    obs = make_observation(torch.rand(1, 1, 32, 32), torch.tensor([4]))
    obs.names = names
    x = torch.rand(3, 1, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([4])
    assert PerCandidateGradients(model, names)(x, y) is None
    sim = ClientSimulator(model, obs)
    with torch.no_grad():
        got = sim.batched(x, y)
    for a, b in zip(got, _vmap_grads(model, names, x, y)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_the_extremes_of_an_outer_product_come_from_its_factors_bit_for_bit():
    from ggl.attack.factored import extremes
    from ggl.attack.per_candidate import OuterSum

    gen = torch.Generator().manual_seed(5)
    for signs in ((1, 1), (1, -1), (-1, 1), (0, 1)):  # mixed signs; all positive, all negative factors
        d = torch.randn(6, 1, 40, generator=gen)
        a = torch.randn(6, 1, 70, generator=gen)
        if signs[0]:
            d, a = d.abs() * signs[0], a.abs() * signs[1]
        t = OuterSum(d, a)
        lo, hi = extremes(t)
        dense = t.dense()
        assert torch.equal(lo, dense.amin((1, 2))) and torch.equal(hi, dense.amax((1, 2)))


@pytest.mark.parametrize("kind", ["l2", "cosine"])
@pytest.mark.parametrize("range_mode", ["global", "per_tensor"])
def test_the_quantized_loss_of_factored_linear_gradients_equals_the_reference_loop(kind, range_mode, monkeypatch):
    """The adaptive CNN search quantizes and matches its linear layers' gradients as outer products (never
    materialised): the same losses as the reference loop (dense gradient, the client's quantizer, match_loss)
    and as the batched dense path, in float64."""
    import ggl.attack.factored as factored
    import ggl.attack.objective as objective
    from _attack_fixtures import TinyPrior
    from ggl.defenses.quantize import quantize_update

    gen = torch.Generator().manual_seed(6)
    x = torch.rand(5, 1, 1, 32, 32, generator=gen)
    y = torch.tensor([3])
    obs = make_observation(x[0], y, arch="cnn", init="default",
                           defenses=[{"name": "quantize", "bits": 4, "range": range_mode}],
                           transform=lambda g: quantize_update(g, 4, range_mode=range_mode)[0])
    obj = objective.GGLObjective(obs, TinyPrior(), y, loss=kind, adaptive=True, model=obs.build_model().double())
    assert obj.factored_trial
    calls = []
    real = objective.outer_quantized_match
    monkeypatch.setattr(objective, "outer_quantized_match", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(factored, "BLOCKWISE_MIN", 0)  # the small layer too (by default materialised)
    x, z = x.double(), torch.zeros(5, obj.dim, dtype=torch.float64)
    with torch.no_grad():
        got = obj.image_losses(x, z)
        want = torch.cat([obj.image_loss_reference(x[i], z[i:i + 1]) for i in range(5)])
        obj.factored_trial = False
        dense = obj.image_losses(x, z)
    assert len(calls) == 2  # both linear layers took the factored path
    assert (want[1:] > 100 * want[0].abs()).all()  # candidate 0 is the observed image: (nearly) its payload
    # atol: 1 - cos at the observed image cancels to ~1e-13 either way
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10 * float(want.abs().max()))
    torch.testing.assert_close(dense, want, rtol=1e-9, atol=1e-10 * float(want.abs().max()))


def test_the_cell_distance_of_an_outer_product_equals_the_dense_cells():
    """``outer_cell_distance`` = ``MinMaxGrid.cell_distance``'s formula on the dense gradient (float64), with
    zero rows, coordinates below lo in code 0's cell and above the top code."""
    from ggl.attack.factored import CellRows, outer_cell_distance
    from ggl.attack.per_candidate import OuterSum

    gen = torch.Generator().manual_seed(8)
    d = torch.randn(5, 1, 12, generator=gen, dtype=torch.float64)
    d[:, :, 3:6] = 0.0
    t = OuterSum(d, torch.randn(5, 1, 30, generator=gen, dtype=torch.float64))
    codes = torch.randint(0, 16, (12, 30), generator=gen).double()
    codes[:, :10] = 0.0
    lo, step = torch.tensor(-0.5, dtype=torch.float64), torch.tensor(0.07, dtype=torch.float64)
    pos, k = (t.dense() - lo) / step, codes
    assert (pos[:, codes == 0] < -0.5).any() and (pos > 15.5).any()
    want = (torch.relu((k - 0.5).clamp_min(0.0) - pos) + torch.relu(pos - (k + 0.5))).pow(2).sum((1, 2))
    torch.testing.assert_close(outer_cell_distance(t, CellRows(codes, lo, step)), want, rtol=1e-12, atol=0)
