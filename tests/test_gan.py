"""The attacker's GAN prior: split hygiene, a short real training run, the prior file and its loader."""
from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from ggl.config import load_config
from ggl.core.errors import ConfigError, UserError

FAST = ["data.name=digits", "gan.g_width=16", "gan.d_width=16", "gan.classifier_epochs=1",
        "gan.quality_every=0", "gan.eval_samples=200", "gan.bn_recalibration=2", "gan.sample_every=1",
        "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "gan.max_steps=20"]


def gan_config(out_dir, *overrides):
    return load_config("gan_mnist.yaml", [f"output_dir={out_dir}", *FAST, *overrides])


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    """One 20-step GAN run on `digits` (shared by several tests)."""
    from ggl.jobs.gan import run_gan

    out = tmp_path_factory.mktemp("gan20")
    cfg = gan_config(out)
    res = run_gan(cfg)
    return cfg, res, pathlib.Path(res["run_dir"])


# ------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("split_seed", [0, 7])
def test_public_split_is_disjoint_from_every_federations_data(split_seed):
    from ggl.data.datamodule import load_split
    from ggl.data.splits import indices_hash

    gan = load_config("gan_mnist.yaml", [f"data.split_seed={split_seed}"])
    fed = load_config("fed_q4.yaml", [f"data.split_seed={split_seed}"])
    assert gan.task == "gan" and fed.task == "fedavg"
    _, g_split = load_split(gan.data)
    _, f_split = load_split(fed.data)
    public = set(g_split.public.tolist())
    assert len(public) == 2000  # 40% of the 5,000 embedded digits
    assert public.isdisjoint(f_split.private.tolist())
    assert public.isdisjoint(f_split.test.tolist())
    # the GAN config inherits the federation's data section: same split, bit for bit
    assert indices_hash(g_split.public) == indices_hash(f_split.public)
    assert np.array_equal(g_split.private, f_split.private)


def test_run_records_public_hash_and_trains_on_public_only(run20):
    from ggl.data.datamodule import load_split
    from ggl.data.splits import indices_hash

    cfg, res, _ = run20
    _, split = load_split(cfg.data)
    assert res["data"]["public_indices_hash"] == indices_hash(split.public)
    assert res["data"]["public_private_overlap"] == 0
    assert res["data"]["num_public"] == len(split.public)


# ------------------------------------------------------------------------------------------- training


def _fixed_batch(cfg, n=128):
    from ggl.data.datamodule import load_split

    data, split = load_split(cfg.data)
    idx = torch.from_numpy(split.public[:n])
    return data.images[idx], data.labels[idx]


@torch.no_grad()
def _d_scores(module, x, y, z):
    module.D.eval()
    G = module.G.train()  # batch statistics, as during training
    fake = G(z, y)
    return module.D(x, y), module.D(fake, y)


def test_twenty_steps_train_both_players(run20):
    """After 20 steps the discriminator separates real from fake better than at init (its loss falls
    below chance), and the generator narrows the gap the trained discriminator sees."""
    from ggl.gan.module import GANModule, d_loss_fn
    from ggl.config import to_container

    cfg, res, run_dir = run20
    assert res["history"] and sum(1 for _ in res["history"]) >= 1
    hp = to_container(cfg)["gan"]
    init = GANModule(hp, 1, 32, 10, seed=cfg.seed)
    trained = GANModule(hp, 1, 32, 10, seed=cfg.seed)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trained.load_state_dict(ckpt["state_dict"])
    assert ckpt["global_step"] > 0

    x, y = _fixed_batch(cfg)
    z = torch.randn(len(y), hp["latent_dim"], generator=torch.Generator().manual_seed(123))
    real0, fake0 = _d_scores(init, x, y, z)
    loss_init = float(d_loss_fn("nonsat", real0, fake0))
    # trained D against the *initial* generator's fakes (same images as the init D saw)
    trained_d_vs_g0 = GANModule(hp, 1, 32, 10, seed=cfg.seed)
    trained_d_vs_g0.D.load_state_dict(trained.D.state_dict())
    real_t, fake_t0 = _d_scores(trained_d_vs_g0, x, y, z)
    loss_trained = float(d_loss_fn("nonsat", real_t, fake_t0))
    print(f"D loss vs G0 fakes: init {loss_init:.3f} -> trained {loss_trained:.3f}")
    assert loss_trained < loss_init
    assert loss_trained < 2 * math.log(2)  # better than chance

    # the trained G fools the trained D more than the initial G does: smaller real-fake gap
    _, fake_t20 = _d_scores(trained, x, y, z)
    gap_g0 = float(real_t.mean() - fake_t0.mean())
    gap_g20 = float(real_t.mean() - fake_t20.mean())
    print(f"trained D's real-fake gap: G0 {gap_g0:.3f} -> G20 {gap_g20:.3f}")
    assert gap_g20 < gap_g0


def test_run_writes_loadable_prior_and_artefacts(run20):
    from ggl.gan.prior import load_prior

    _, res, run_dir = run20
    for name in ("prior.pt", "classifier.pt", "samples.png", "results.json", "config.yaml",
                 "checkpoints/last.ckpt", "samples/epoch0001.png"):
        assert (run_dir / name).is_file(), name
    G = load_prior(run_dir / "prior.pt", channels=1, image_size=32)
    assert (G.latent_dim, G.num_classes, G.conditional, G.channels, G.image_size) == (128, 10, True, 1, 32)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    z = torch.randn(20, G.latent_dim)
    out = G(z, torch.arange(20) % 10)
    assert out.shape == (20, 1, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert G.meta["public_indices_hash"] == res["data"]["public_indices_hash"]
    m = res["metrics"]
    assert m["fid"] > 0 and 0 <= m["class_agreement"] <= 1 and m["fid_real_vs_real"] >= 0


def test_same_seed_same_grid_and_prior_other_seed_differs(run20, tmp_path):
    from ggl.jobs.gan import run_gan

    cfg, _, run_dir = run20
    again = pathlib.Path(run_gan(gan_config(tmp_path / "a", "gan.quality_every=0"))["run_dir"])
    assert (again / "samples.png").read_bytes() == (run_dir / "samples.png").read_bytes()
    assert (again / "samples" / "epoch0001.png").read_bytes() == (run_dir / "samples" / "epoch0001.png").read_bytes()
    sd1 = torch.load(run_dir / "prior.pt", weights_only=True)["state_dict"]
    sd2 = torch.load(again / "prior.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    other = pathlib.Path(run_gan(gan_config(tmp_path / "b", "seed=1", "gan.max_steps=2"))["run_dir"])
    assert (other / "samples.png").read_bytes() != (run_dir / "samples.png").read_bytes()


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    from ggl.jobs.gan import run_gan

    common = ["gan.max_steps=null", "gan.g_width=8", "gan.d_width=8", "checkpoint_every=1"]
    full = run_gan(gan_config(tmp_path / "full", *common, "gan.epochs=2"))
    part = run_gan(gan_config(tmp_path / "part", *common, "gan.epochs=1"))
    assert part["run_dir"] != full["run_dir"]
    resumed = run_gan(gan_config(tmp_path / "part", *common, "gan.epochs=2", f"resume={part['run_dir']}"))
    assert resumed["run_dir"] == part["run_dir"]  # continues in the same folder
    assert len(resumed["history"]) == len(full["history"]) == 2
    sd_full = torch.load(pathlib.Path(full["run_dir"]) / "prior.pt", weights_only=True)["state_dict"]
    sd_res = torch.load(pathlib.Path(resumed["run_dir"]) / "prior.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sd_full[k], sd_res[k]) for k in sd_full)
    # the same resume again: already finished, nothing retrained or rewritten
    run_dir = pathlib.Path(resumed["run_dir"])
    before = {p: p.read_bytes() for p in (run_dir / "results.json", run_dir / "prior.pt")}
    again = run_gan(gan_config(tmp_path / "part", *common, "gan.epochs=2", f"resume={part['run_dir']}"))
    assert again["history"] == resumed["history"] and {p: p.read_bytes() for p in before} == before
    with pytest.raises(UserError, match="gan.epochs"):
        run_gan(gan_config(tmp_path / "part", *common, "gan.epochs=1", f"resume={part['run_dir']}"))
    with pytest.raises(UserError, match="gan.lr_g"):
        run_gan(gan_config(tmp_path / "part", *common, "gan.epochs=3", "gan.lr_g=0.1",
                           f"resume={part['run_dir']}"))


def test_unconditional_wgan_gp_run(tmp_path):
    from ggl.gan.prior import load_prior
    from ggl.jobs.gan import run_gan

    res = run_gan(gan_config(tmp_path, "gan.loss=wgan-gp", "gan.conditional=false", "gan.n_critic=2",
                             "gan.max_steps=4", "gan.ema=0", "gan.spectral_norm=false", "gan.augment=translation"))
    hist = res["history"][-1]
    assert "gp" in hist and math.isfinite(hist["gp"]) and "g_loss" in hist
    assert res["metrics"]["class_agreement"] is None
    G = load_prior(pathlib.Path(res["run_dir"]) / "prior.pt")
    assert not G.conditional and G.num_classes == 0
    assert G(torch.randn(3, G.latent_dim), None).shape == (3, 1, 32, 32)


# ------------------------------------------------------------------------------------------- the prior file


def test_shipped_prior_matches_todays_public_split():
    """checkpoints/gan_mnist5k.pt was trained on the public split the code cuts today (and only on it)."""
    import json

    from ggl.data.datamodule import load_split
    from ggl.data.splits import indices_hash
    from ggl.gan.prior import DEFAULT_PRIOR, load_prior

    record = json.loads(DEFAULT_PRIOR.with_suffix(".json").read_text())
    cfg = load_config("fed_q4.yaml")  # any federation's split
    _, split = load_split(cfg.data)
    assert record["data"]["public_indices_hash"] == indices_hash(split.public)
    assert record["config"]["data"]["split_seed"] == cfg.data.split_seed
    G = load_prior(DEFAULT_PRIOR, channels=1, image_size=32)
    assert G.conditional and G.num_classes == 10 and G.meta["public_indices_hash"] == indices_hash(split.public)
    assert record["metrics"]["class_agreement"] >= 0.90
    assert DEFAULT_PRIOR.stat().st_size < 5_000_000  # generator weights only


def _tiny_prior(tmp_path, classes=10, width=8, name="p.pt"):
    from ggl.gan.module import recalibrate_bn
    from ggl.gan.prior import PriorGenerator, prior_state, save_prior
    from ggl.models.gan import Generator

    torch.manual_seed(0)
    G = PriorGenerator(Generator(16, 1, 32, classes, width), 16, 1, 32, classes)
    recalibrate_bn(G, 2, seed=0)
    path = save_prior(tmp_path / name, prior_state(G, "ggl.models.gan.Generator", {"width": width}, {"x": 1}))
    return G, path


def test_load_prior_round_trip(tmp_path):
    from ggl.gan.prior import load_prior

    G, path = _tiny_prior(tmp_path)
    L = load_prior(path, channels=1, image_size=32)
    z, y = torch.randn(6, 16), torch.arange(6)
    assert torch.equal(L(z, y), G(z, y))
    assert L.meta == {"x": 1}
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="class-conditional"):
        L(z, None)


def test_generator_is_a_pure_batch_consistent_function(tmp_path):
    from ggl.gan.prior import load_prior

    _, path = _tiny_prior(tmp_path)
    # float64: a batch of 1 and a batch of 50 may take float32 kernels that round differently on some CPUs
    G = load_prior(path).double()
    z = torch.randn(50, G.latent_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(50) % 10
    full = G(z, y)
    assert torch.allclose(G(z[:1], y[:1]), full[:1], rtol=0, atol=1e-10)
    assert torch.allclose(G(z[17:20], y[17:20]), full[17:20], rtol=0, atol=1e-10)
    assert torch.equal(G(z, y), full)
    # torch.func: per-sample vmap gives the same images, and gradients w.r.t. z flow
    per = torch.func.vmap(lambda zz, yy: G(zz[None], yy[None])[0])(z, y)
    assert torch.allclose(per, full, rtol=0, atol=1e-10)
    gz = torch.func.grad(lambda zz: G(zz, y).square().sum())(z)
    assert gz.shape == z.shape and gz.abs().sum() > 0


def _one_line_naming(exc, path):
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_load_prior_errors(tmp_path, monkeypatch):
    import ggl.gan.prior as prior_mod
    from ggl.gan.prior import load_prior

    _, path = _tiny_prior(tmp_path)
    with pytest.raises(UserError) as e:
        load_prior(path, channels=3)
    assert "channels 1 != 3" in _one_line_naming(e, path)
    with pytest.raises(UserError) as e:
        load_prior(path, image_size=64)
    assert "image_size 32 != 64" in _one_line_naming(e, path)

    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        load_prior(truncated)
    assert "truncated" in _one_line_naming(e, truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UserError) as e:
        load_prior(garbage)
    _one_line_naming(e, garbage)

    plain = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.zeros(2)}, plain)
    with pytest.raises(UserError) as e:
        load_prior(plain)
    assert "not a ggl GAN prior" in _one_line_naming(e, plain)

    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError) as e:
        load_prior(missing)
    assert "not found" in _one_line_naming(e, missing)
    monkeypatch.setattr(prior_mod, "DEFAULT_PRIOR", tmp_path / "gan_mnist5k.pt")
    with pytest.raises(UserError) as e:
        load_prior(tmp_path / "gan_mnist5k.pt")
    assert "python train.py --config gan_mnist.yaml gan.export=checkpoints/gan_mnist5k.pt" in \
        _one_line_naming(e, tmp_path / "gan_mnist5k.pt")


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse it first."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payload_is_refused(tmp_path):
    from ggl.gan.prior import FORMAT, load_prior

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "payload": _Payload(marker)}, evil)
    with pytest.raises(UserError) as e:
        load_prior(evil)
    assert "refused" in _one_line_naming(e, evil)
    assert not marker.exists()


def test_prior_cannot_name_arbitrary_callables(tmp_path):
    from ggl.gan.prior import load_prior

    G, path = _tiny_prior(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob["generator"] = {"class": "subprocess.Popen", "kwargs": {"args": ["touch", str(tmp_path / "x")]}}
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(UserError) as e:
        load_prior(bad)
    assert "not one of ggl's" in _one_line_naming(e, bad)  # refused before anything is imported
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError) as e:  # even when the user vouches for the path, only nn.Modules are built
        load_prior(bad, trusted_generators=["subprocess.Popen"])
    assert "not a torch.nn.Module subclass" in _one_line_naming(e, bad)
    assert not (tmp_path / "x").exists()

    blob = torch.load(path, weights_only=True)
    blob["generator"]["kwargs"] = {"width": 12}  # spec and weights disagree
    torch.save(blob, bad)
    with pytest.raises(UserError) as e:
        load_prior(bad)
    assert "do not fit" in _one_line_naming(e, bad)


class TinyGenerator(nn.Module):
    """A user's own generator: any nn.Module built from the spec that maps (z, y) -> images."""

    def __init__(self, latent_dim, channels, image_size, num_classes, scale=1.0):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.lin = nn.Linear(latent_dim, channels * image_size * image_size)
        self.scale = scale

    def forward(self, z, y=None):
        return torch.sigmoid(self.scale * self.lin(z)).view(-1, *self.shape)


class _FlatGenerator(TinyGenerator):
    def forward(self, z, y=None):
        return self.lin(z)


def test_plug_your_own_generator(tmp_path):
    from ggl.gan.prior import build_generator, load_prior, prior_state, save_prior

    dotted = f"{TinyGenerator.__module__}.TinyGenerator"
    G = build_generator(dotted, 8, 3, 32, 0, kwargs={"scale": 2.0})
    path = save_prior(tmp_path / "mine.pt", prior_state(G, dotted, {"scale": 2.0}))
    with pytest.raises(UserError, match="not one of ggl's"):  # a file naming a foreign class: not imported
        load_prior(path, channels=3, image_size=32)
    L = load_prior(path, channels=3, image_size=32, trusted_generators=[dotted])  # the user vouches for it
    z = torch.randn(4, 8)
    assert torch.equal(L(z), G(z)) and L(z).shape == (4, 3, 32, 32)
    with pytest.raises(UserError, match="fails on"):
        build_generator("torch.nn.Identity", 8, 3, 32, 0)
    with pytest.raises(UserError, match=r"images of shape \(2, 3072\), expected \(2, 3, 32, 32\)"):
        build_generator(f"{TinyGenerator.__module__}._FlatGenerator", 8, 3, 32, 0)
    with pytest.raises(UserError, match="cannot be imported"):
        build_generator("ggl.models.gan.NoSuchGenerator", 8, 3, 32, 0)


# ------------------------------------------------------------------------------------------- config


def test_gan_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'gan.loss'"):
        load_config("gan_mnist.yaml", ["gan.loss=lsgan"])
    with pytest.raises(ConfigError, match="gan.latent_dim"):
        load_config("gan_mnist.yaml", ["gan.latnt_dim=3"])
    with pytest.raises(ConfigError, match="'gan.betas'"):
        load_config("gan_mnist.yaml", ["gan.betas=[0.5]"])
    with pytest.raises(ConfigError, match="'gan.generator_kwargs'"):
        load_config("gan_mnist.yaml", ["gan.generator_kwargs.channels=3"])


@pytest.mark.parametrize("name", ["gan_mnist.yaml", "gan_cifar10.yaml", "gan_celeba.yaml"])
def test_gan_configs_load_and_document_every_key(name):
    from ggl.config import CONFIG_DIR

    cfg = load_config(name)
    assert cfg.task == "gan"
    for line in (CONFIG_DIR / name).read_text().splitlines():
        body = line.split("#")[0].rstrip()
        is_section = body.endswith(":")  # a section header, like data: or gan:
        if ":" in body and not is_section:
            assert "#" in line, f"{name}: key without a comment: {line!r}"
