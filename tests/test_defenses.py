"""Clip, Gaussian noise (+ DP epsilon), top-k (+ error feedback), sign: math, bits, config, one tiny run each."""
import math

import pytest
import torch
from opacus.accountants.analysis import rdp as opacus_rdp
from lightning.pytorch.callbacks import Callback

from ggl.config import load_config
from ggl.defenses.accounting import dp_epsilon
from ggl.defenses.clip import clip_update, global_norm
from ggl.defenses.noise import add_gaussian_noise
from ggl.defenses.sign import sign_update
from ggl.defenses import defenses_label, parse_defense, resolve_noise
from ggl.defenses.clip import Clip
from ggl.defenses.noise import Noise
from ggl.defenses.quantize import Quantize
from ggl.defenses.sign import Sign
from ggl.defenses.topk import TopK, index_bits, topk_sparsify
from ggl.core.errors import ConfigError
from ggl.fl.callbacks import DefenseCallback, build_defense_callbacks
from ggl.fl.update import ClientUpdate


def _tensors(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 8, generator=g) * scale, torch.randn(8, generator=g) * 5 * scale,
            torch.randn(3, 3, 3, generator=g) * 0.01 * scale]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _update(tensors, client=0, rnd=0, seed=0):
    return ClientUpdate(client_id=client, round=rnd, tensors=list(tensors), names=[f"p{i}" for i in range(len(tensors))],
                        num_samples=10, kind="delta", bits=32 * sum(t.numel() for t in tensors), seed=seed)


# ------------------------------------------------------------------------------------------ clip
@pytest.mark.parametrize("max_norm", [0.1, 1.0, 7.5])
def test_clip_bounds_the_global_norm_and_keeps_direction(max_norm):
    tensors = _tensors(scale=3.0)
    out, norm = clip_update(tensors, max_norm)
    assert torch.isclose(norm, _flat(tensors).norm())
    assert float(global_norm(out)) <= max_norm * (1 + 1e-6)  # float32 rounding: within an ulp
    assert float(global_norm(out)) == pytest.approx(max_norm, rel=1e-4)  # norm >> bound: lands on it
    cos = torch.nn.functional.cosine_similarity(_flat(out), _flat(tensors), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)
    assert [t.shape for t in out] == [t.shape for t in tensors]


def test_clip_leaves_a_small_update_alone():
    tensors = _tensors(scale=1e-3)
    out, norm = clip_update(tensors, 10.0)
    assert float(norm) < 10.0
    assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(out, tensors))


# ------------------------------------------------------------------------------------------ noise
def test_noise_has_the_configured_std_and_is_seeded_per_client():
    x = [torch.zeros(200, 250), torch.zeros(50_000)]
    out = add_gaussian_noise(x, 0.3, torch.Generator().manual_seed(0))
    flat = _flat(out)
    # 100k draws: the sample std is within ~0.2% of 0.3 (1% tolerance), the mean within ~0.001
    assert float(flat.std()) == pytest.approx(0.3, rel=0.01)
    assert abs(float(flat.mean())) < 0.005

    cb = DefenseCallback(Noise(std=0.3))
    tensors = _tensors()
    a = cb.on_client_update(None, None, _update(tensors, client=1, rnd=2))
    b = cb.on_client_update(None, None, _update(tensors, client=1, rnd=2))
    c = cb.on_client_update(None, None, _update(tensors, client=2, rnd=2))
    d = cb.on_client_update(None, None, _update(tensors, client=1, rnd=3))
    assert torch.equal(_flat(a.tensors), _flat(b.tensors))
    assert not torch.equal(_flat(a.tensors), _flat(c.tensors)) and not torch.equal(_flat(a.tensors), _flat(d.tensors))
    assert a.bits == 32 * sum(t.numel() for t in tensors)  # dense float32 again, whatever came in
    noise = _flat(a.tensors) - _flat(tensors)
    assert 0.2 < float(noise.std()) < 0.4


def test_noise_multiplier_is_relative_to_the_clip_before_it():
    clip, noise = Clip(max_norm=2.0), Noise(noise_multiplier=0.5)
    assert resolve_noise([clip, noise], 1) == (1.0, 0.5)
    # an absolute std behind a clip still gets a DP multiplier: std / bound
    assert resolve_noise([clip, Noise(std=0.5)], 1) == (0.5, 0.25)
    # norm-preserving defences in between keep the bound; quantization or error feedback break it
    assert resolve_noise([clip, TopK(fraction=0.5), Sign(), noise], 3) == (1.0, 0.5)
    assert resolve_noise([clip, Quantize(bits=4), noise], 2) == (1.0, None)
    assert resolve_noise([clip, TopK(error_feedback=True), noise], 2) == (1.0, None)
    assert resolve_noise([Noise(std=0.1)], 0) == (0.1, None)  # no clip: no DP guarantee
    with pytest.raises(ConfigError, match=r"defenses\[1\]\.noise_multiplier"):
        resolve_noise([Quantize(), noise], 1)
    with pytest.raises(ConfigError, match=r"defenses\[0\]\.noise_multiplier"):
        build_defense_callbacks([noise, clip])  # the clip must come *before* the noise
    cbs = build_defense_callbacks([clip, noise])
    assert cbs[1].defense.resolved == (1.0, 0.5)


# ------------------------------------------------------------------------------------------ DP epsilon
def test_epsilon_matches_opacus_and_falls_with_more_noise():
    z, q, steps, delta = 1.1, 0.01, 1000, 1e-5
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # RDPAccountant.DEFAULT_ALPHAS
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders)
    expected, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    assert dp_epsilon(z, q, steps, delta) == pytest.approx(float(expected), rel=1e-9)
    assert 0.5 < dp_epsilon(z, q, steps, delta) < 5  # a sane magnitude, not a unit mix-up
    eps = [dp_epsilon(m, 1.0, 20, delta) for m in (0.5, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert dp_epsilon(1.0, 1.0, 40, delta) > dp_epsilon(1.0, 1.0, 20, delta) > dp_epsilon(1.0, 0.1, 20, delta)
    assert dp_epsilon(1.0, 1.0, 0, delta) == 0.0 and dp_epsilon(0.0, 1.0, 5, delta) == math.inf


# ------------------------------------------------------------------------------------------ top-k
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_topk_keeps_exactly_k_largest_and_counts_indices(fraction):
    tensors = _tensors()
    flat = _flat(tensors)
    n = flat.numel()  # 163
    k = math.ceil(fraction * n)
    out, bits = topk_sparsify(tensors, fraction)
    kept = _flat(out)
    assert int((kept != 0).sum()) == k
    assert torch.equal(kept[kept != 0], flat[kept != 0])  # kept coordinates are sent exactly
    if k < n:
        assert float(flat[kept != 0].abs().min()) >= float(flat[kept == 0].abs().max())
    assert index_bits(n) == 8 and index_bits(256) == 8 and index_bits(257) == 9
    assert bits == k * (32 + 8)


def _round(cb, updates):
    cb.on_train_batch_start(None, None, None, 0)
    sent = [cb.on_client_update(None, None, u) for u in updates]
    cb.on_train_batch_end(None, None, None, None, 0)
    return sent


def test_error_feedback_carries_the_residual_per_client_and_survives_state_dict():
    spec = TopK(fraction=0.1, error_feedback=True)
    cb = DefenseCallback(spec)
    u0 = [_update(_tensors(0), client=0, rnd=0), _update(_tensors(1), client=1, rnd=0)]
    s0 = _round(cb, u0)
    for u, s in zip(u0, s0):  # residual = what was not sent, per client
        assert torch.allclose(cb.states[u.client_id], _flat(u.tensors) - _flat(s.tensors))
    assert not torch.equal(cb.states[0], cb.states[1])

    saved = cb.state_dict()
    u1 = _update(_tensors(2), client=0, rnd=1)
    expected, _ = topk_sparsify(
        [c.view_as(t) for c, t in zip(torch.split(_flat(u1.tensors) + cb.states[0], [t.numel() for t in u1.tensors]),
                                      u1.tensors)], 0.1)
    (s1,) = _round(cb, [u1])
    assert torch.equal(_flat(s1.tensors), _flat(expected))
    # nothing is lost: what client 0 sent over both rounds + its residual = the sum of its updates
    assert torch.allclose(_flat(s0[0].tensors) + _flat(s1.tensors) + cb.states[0],
                          _flat(u0[0].tensors) + _flat(u1.tensors), atol=1e-6)

    fresh = DefenseCallback(spec)
    fresh.load_state_dict(saved)
    assert fresh.state_key == cb.state_key
    (again,) = _round(fresh, [u1])
    assert torch.equal(_flat(again.tensors), _flat(s1.tensors))

    # outside a round (an audit capture) the residual is sent but the state is left alone
    before = {c: r.clone() for c, r in fresh.states.items()}
    fresh.on_client_update(None, None, _update(_tensors(3), client=0, rnd=2))
    assert before.keys() == fresh.states.keys()
    assert all(torch.equal(before[c], fresh.states[c]) for c in before)
    # without error feedback nothing is remembered
    plain = DefenseCallback(TopK(fraction=0.1))
    _round(plain, u0)
    assert plain.states == {}


# ------------------------------------------------------------------------------------------ sign
def test_sign_payload_and_signs():
    tensors = _tensors()
    tensors[1][0] = 0.0
    out, bits = sign_update(tensors)
    assert bits == sum(t.numel() for t in tensors) + 32 * len(tensors) == 163 + 96
    for t, o in zip(tensors, out):
        nz = t != 0
        assert torch.equal(torch.sign(o[nz]), torch.sign(t[nz]))
        assert torch.allclose(o.abs(), t.abs().mean().expand_as(o))  # one scale per tensor: mean |x|
        assert torch.unique(o).numel() <= 2
    assert float(out[1][0]) > 0  # a zero is sent as +scale (1 bit carries no zero)
    assert torch.equal(sign_update([torch.zeros(4)])[0][0], torch.zeros(4))
    cb_out = DefenseCallback(Sign()).on_client_update(None, None, _update(tensors))
    assert cb_out.bits == bits


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("entry, key", [
    ({"name": "clip", "max_norm": 0.0}, "max_norm"),
    ({"name": "noise"}, "std"),
    ({"name": "noise", "std": 0.1, "noise_multiplier": 1.0}, "noise_multiplier"),
    ({"name": "noise", "std": -1.0}, "std"),
    ({"name": "noise", "std": 0.1, "delta": 1.0}, "delta"),
    ({"name": "topk", "fraction": 0.0}, "fraction"),
    ({"name": "topk", "fraction": 0.1, "error_feedbak": True}, "error_feedback"),
    ({"name": "sign", "bits": 1}, "bits"),
])
def test_bad_defense_keys_name_the_key(entry, key):
    with pytest.raises(ConfigError, match=rf"defenses\[2\]\.{key}"):
        parse_defense(entry, "defenses[2]")


@pytest.mark.parametrize("config, label", [("fed_clip.yaml", "clip0.25"), ("fed_noise.yaml", "clip0.25+nm"),
                                           ("fed_topk.yaml", "top0.01-ef"), ("fed_sign.yaml", "sign"),
                                           ("fed_soteria.yaml", "soteria60"), ("fed_prune.yaml", "prune90"),
                                           ("fed_qsgd.yaml", "qsgd4-b512")])
def test_shipped_configs_load(config, label):
    cfg = load_config(config)
    assert defenses_label(cfg.defenses).startswith(label)
    callbacks = build_defense_callbacks(cfg.defenses)
    assert len(callbacks) == len(cfg.defenses)
    assert all(cb.defense.label == d.label for cb, d in zip(callbacks, cfg.defenses))
    if config == "fed_noise.yaml":
        assert callbacks[1].defense.resolved[1] == cfg.defenses[1].noise_multiplier > 0  # a DP run


# ------------------------------------------------------------------------------------------ in a federation
_TINY = ("fl.local_steps=1", "data.limit=400")  # one local step on a few hundred digits: the defences, not learning


class _Metrics(Callback):
    def on_fit_end(self, trainer, module):
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_dp_fedavg_run_reports_epsilon(make_cfg):
    from ggl.jobs.federation import run_federation

    z = 0.7
    noise = DefenseCallback(Noise(noise_multiplier=z), [Clip(max_norm=1.0), Noise(noise_multiplier=z)], 1)
    metrics = _Metrics()
    res = run_federation(make_cfg("defenses.0.max_norm=1.0", *_TINY, config="fed_clip.yaml"),
                         extra_callbacks=[noise, metrics])  # clip to 1.0, then the noise
    expected = dp_epsilon(z, 1.0, 2, 1e-5)  # 4 of 4 clients per round, 2 rounds
    summary = noise.summary()
    assert summary["rounds"] == 2 and summary["sample_rate"] == 1.0
    assert summary["epsilon"] == pytest.approx(expected) and summary["delta"] == 1e-5
    assert metrics.metrics["privacy/epsilon"] == pytest.approx(expected, rel=1e-5)
    assert res["final"]["uplink_bits_per_round"] == 4 * 32 * sum(
        v.numel() for k, v in _state(res).items())  # noise makes the update dense float32


def _state(res):
    from pathlib import Path
    return torch.load(Path(res["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_topk_error_feedback_run_counts_bits_and_checkpoints_residuals(make_cfg):
    from pathlib import Path

    from ggl.jobs.federation import run_federation

    res = run_federation(make_cfg("fl.rounds=1", *_TINY, config="fed_topk.yaml"))
    ckpt = torch.load(Path(res["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    numel = sum(v.numel() for v in ckpt["state_dict"].values())
    k = math.ceil(0.01 * numel)
    assert res["final"]["uplink_bits_per_round"] == 4 * k * (32 + index_bits(numel))
    key = DefenseCallback(TopK(fraction=0.01, error_feedback=True)).state_key
    residuals = ckpt["callbacks"][key]["states"]
    assert sorted(residuals) == [0, 1, 2, 3] and all(r.numel() == numel for r in residuals.values())
    assert all(float(r.abs().sum()) > 0 for r in residuals.values())
