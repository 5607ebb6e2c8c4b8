"""GANModule: the attacker's GAN prior as a LightningModule with manual optimisation.

One step = one discriminator update on a batch of public images (and as many fakes) and, every
``n_critic``-th step, one generator update on the same fakes. Losses: non-saturating, hinge or
WGAN-GP. Optional EMA of the generator's weights (the exported prior is the EMA generator).

Randomness depends only on ``(seed, step)`` and ``(seed, epoch)`` (each step's latents and each epoch's
batch order from their own seeded streams), so a resumed run continues exactly as an uninterrupted one
and the sample grid is the same for every run with the same seed. The exported prior's batch norm is
recalibrated ("standing statistics": the final weights' average batch statistics over
``bn_recalibration`` seeded batches) and used in eval mode: a per-sample function of (z, y).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Dict, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler

from ggl.gan.prior import PriorGenerator, build_generator, freeze, generator_kwargs
from ggl.models.gan import Discriminator
from ggl.core.seeding import generator

STREAM_NOISE = 21
STREAM_ORDER = 22
STREAM_GRID = 23
STREAM_BN = 24


# ---------------------------------------------------------------------------------------------- data


class EpochSeededSampler(Sampler):
    """A permutation of ``range(n)`` that depends only on (seed, epoch); Lightning calls set_epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=generator(self.seed, self.epoch, STREAM_ORDER)).tolist())


def translate(x: Tensor, gen: torch.Generator, max_shift: int) -> Tensor:
    """Shift every image by its own random offset of up to ``max_shift`` pixels (zero fill).

    Differentiable in ``x`` (a gather), so it can sit between G and D (DiffAugment's translation).
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen).to(x.device)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = pad.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------- losses


def d_loss_fn(kind: str, d_real: Tensor, d_fake: Tensor) -> Tensor:
    if kind == "nonsat":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    return d_fake.mean() - d_real.mean()  # wgan-gp (the penalty is added by the caller)


def g_loss_fn(kind: str, d_fake: Tensor) -> Tensor:
    if kind == "nonsat":
        return F.softplus(-d_fake).mean()
    return -d_fake.mean()  # hinge and wgan-gp


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, y: Optional[Tensor], gen: torch.Generator) -> Tensor:
    """WGAN-GP: (||grad_x D(x_hat)|| - 1)^2 on random interpolates of real and fake images."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device, real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = D(x_hat, y)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square().mean()


# ---------------------------------------------------------------------------------------------- BN


@torch.no_grad()
def recalibrate_bn(G: PriorGenerator, batches: int, seed: int, batch_size: int = 100) -> PriorGenerator:
    """Replace G's batch-norm running statistics by their average over ``batches`` seeded batches.

    Deterministic given ``seed``; leaves G in eval mode. ``batches=0`` keeps the current statistics.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches > 0 and norms:
        device = next(G.parameters()).device
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        G.train()
        gen = generator(seed, STREAM_BN)
        for _ in range(batches):
            z = torch.randn(batch_size, G.latent_dim, generator=gen).to(device)
            y = (torch.arange(batch_size) % G.num_classes).to(device) if G.conditional else None
            G(z, y)
        for m, mom in zip(norms, saved):
            m.momentum = mom
    G.eval()
    return G


def grid_latents(G: PriorGenerator, seed: int, per_class: int, size: int):
    """The fixed-seed latents of the sample grid: one row of ``per_class`` per class when conditional."""
    n = G.num_classes * per_class if G.conditional else size
    z = torch.randn(n, G.latent_dim, generator=generator(seed, STREAM_GRID))
    y = torch.arange(G.num_classes).repeat_interleave(per_class) if G.conditional else None
    return z, y


@torch.no_grad()
def sample_grid(G: PriorGenerator, seed: int, per_class: int = 10, size: int = 100) -> Tensor:
    """(C, H, W) grid image in [0, 1] of G's fixed-seed samples (G is used in its current mode)."""
    from torchvision.utils import make_grid

    z, y = grid_latents(G, seed, per_class, size)
    device = next(G.parameters()).device
    images = G(z.to(device), None if y is None else y.to(device)).cpu()
    nrow = per_class if G.conditional else max(1, int(math.ceil(math.sqrt(size))))
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=0.5)
    return grid[:1] if G.channels == 1 else grid  # grayscale stays one channel (smaller PNG)


# ---------------------------------------------------------------------------------------------- module


class GANModule(L.LightningModule):
    """Generator + discriminator trained on public images; ``export_generator()`` is the prior."""

    def __init__(self, gan: Dict, channels: int, image_size: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.cfg = dict(gan)
        self.seed = int(seed)
        classes = num_classes if self.cfg["conditional"] else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.G: PriorGenerator = build_generator(self.cfg["generator"], self.cfg["latent_dim"], channels,
                                                     image_size, classes, _KwargsView(self.cfg).kwargs())
            self.D = Discriminator(channels, image_size, classes, self.cfg["d_width"],
                                   spectral_norm=self.cfg["spectral_norm"],
                                   aux_classifier=self.cfg.get("ac_weight", 0.0) > 0)
        self.G_ema: Optional[PriorGenerator] = freeze(copy.deepcopy(self.G)).train() if self.cfg["ema"] > 0 else None
        self.history: List[dict] = []
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}
        self._images = 0
        self._epoch_start = self._last_batch_end = 0.0
        self.epoch_extra: Dict[str, float] = {}  # filled by callbacks (quality), merged into history
        self.images_per_second: Optional[float] = None

    # -------------------------------------------------------------------------- set-up
    def configure_optimizers(self):
        betas = tuple(self.cfg["betas"])
        opt_g = torch.optim.Adam(self.G.parameters(), lr=self.cfg["lr_g"], betas=betas)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=self.cfg["lr_d"], betas=betas)
        return [opt_g, opt_d]

    @property
    def sampling_generator(self) -> PriorGenerator:
        """The generator that is sampled and exported: the EMA one when enabled."""
        return self.G_ema if self.G_ema is not None else self.G

    def total_steps(self) -> int:
        steps = self.trainer.max_epochs * self.trainer.num_training_batches
        return min(steps, self.cfg["max_steps"]) if self.cfg.get("max_steps") else steps

    def step_index(self, batch_idx: int) -> int:
        return self.current_epoch * self.trainer.num_training_batches + batch_idx

    # -------------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int):
        x, y = batch
        cfg = self.cfg
        step = self.step_index(batch_idx)
        opt_g, opt_d = self.optimizers()
        if cfg["lr_decay"] == "linear":  # a function of the step: nothing to restore on resume
            scale = max(0.0, 1.0 - step / max(1, self.total_steps()))
            for opt, lr in ((opt_g, cfg["lr_g"]), (opt_d, cfg["lr_d"])):
                for group in opt.param_groups:
                    group["lr"] = lr * scale
        gen = generator(self.seed, step, STREAM_NOISE)
        cond = self.G.conditional
        y_in = y if cond else None
        z = torch.randn(x.shape[0], self.G.latent_dim, generator=gen).to(x.device)
        shift = max(1, x.shape[-1] // 8) if cfg["augment"] == "translation" else 0
        aug = lambda t: translate(t, gen, shift)  # noqa: E731

        # discriminator
        fake = self.G(z, y_in)
        self.D.requires_grad_(True)
        ac = cfg.get("ac_weight", 0.0) if cond else 0.0
        d_real, cls_real = self.D(aug(x), y_in, return_aux=True)
        d_fake = self.D(aug(fake.detach()), y_in)
        d_loss = d_loss_fn(cfg["loss"], d_real, d_fake)
        logs = {"d_loss": d_loss.detach(), "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
        if ac > 0:  # AC-GAN: D's class head learns the real images' labels
            ac_real = F.cross_entropy(cls_real, y)
            d_loss = d_loss + ac * ac_real
            logs["ac_real"] = ac_real.detach()
        if cfg["loss"] == "wgan-gp":
            gp = gradient_penalty(self.D, x, fake.detach(), y_in, gen)
            d_loss = d_loss + cfg["gp_weight"] * gp
            logs["gp"] = gp.detach()
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()

        # generator, on the same fakes, every n_critic steps
        if (step + 1) % cfg["n_critic"] == 0:
            self.D.requires_grad_(False)  # only input gradients are needed
            d_gen, cls_gen = self.D(aug(fake), y_in, return_aux=True)
            g_loss = g_loss_fn(cfg["loss"], d_gen)
            if ac > 0:  # ... and G makes fakes that head assigns to their class
                ac_fake = F.cross_entropy(cls_gen, y)
                g_loss = g_loss + ac * ac_fake
                logs["ac_fake"] = ac_fake.detach()
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.D.requires_grad_(True)
            self._update_ema(step)
            logs["g_loss"] = g_loss.detach()
        logs["d_gap"] = logs["d_real"] - logs["d_fake"]
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False,
                      prog_bar=False, batch_size=x.shape[0])
        self.log("d_loss", logs["d_loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        for k, v in logs.items():  # epoch means (per key: generator losses exist every n_critic steps)
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1
        self._images += x.shape[0]
        max_steps = cfg.get("max_steps")
        if max_steps is not None and step + 1 >= max_steps:
            self.trainer.should_stop = True

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.G_ema is None:
            return
        g_step = (step + 1) // self.cfg["n_critic"]
        beta = min(self.cfg["ema"], (1.0 + g_step) / (10.0 + g_step))  # warm-up: follow G closely at first
        ema_p = list(self.G_ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.G.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def on_train_epoch_start(self) -> None:
        self._sums, self._counts, self._images, self.epoch_extra = {}, {}, 0, {}
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        images = self._images
        seconds = self._last_batch_end - self._epoch_start  # training only, not sampling/quality
        row = {"epoch": self.current_epoch, **{k: v / self._counts[k] for k, v in self._sums.items()},
               "images_per_second": images / max(seconds, 1e-9), "train_seconds": seconds,
               **self.epoch_extra}
        self.images_per_second = row["images_per_second"]
        self.history.append(row)
        self.log("train/images_per_second", row["images_per_second"], on_step=False, on_epoch=True)

    # -------------------------------------------------------------------------- export
    def export_generator(self) -> PriorGenerator:
        """A frozen, eval-mode copy of the sampling generator with recalibrated batch-norm statistics."""
        G = copy.deepcopy(self.sampling_generator).to(self.device)
        recalibrate_bn(G, self.cfg["bn_recalibration"], self.seed)
        return freeze(G)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ggl_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("ggl_history", []))


class _KwargsView:
    """generator_kwargs() from the plain dict of the gan config."""

    def __init__(self, cfg: Dict):
        self.generator = cfg["generator"]
        self.generator_kwargs = cfg.get("generator_kwargs") or {}
        self.g_width = cfg["g_width"]

    def kwargs(self) -> Dict:
        return generator_kwargs(self)
