"""Throughput of the GAN prior on this machine (never run by the tests).

    python benchmarks/bench_gan.py [--threads 1] [--width 32] [--batch 64] [--prior checkpoints/gan_mnist5k.pt]

Prints: training images/s (one discriminator + one generator step per batch of real images, as
GANModule does with gan.n_critic=1) and sampling images/s of the prior for attack-sized populations
(50 latents, eval mode, no grad / with grad w.r.t. z). On a shared CPU the numbers move with the load:
run it twice and report what else was running.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ggl.models.gan import Discriminator, Generator


def _rate(fn, images: int, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--prior", default=None, help="a prior file to time for sampling (default: a fresh net)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    G = Generator(128, 1, 32, 10, args.width)
    D = Discriminator(1, 32, 10, args.width)
    opt_g = torch.optim.Adam(G.parameters(), 5e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 5e-4, betas=(0.5, 0.999))
    x, y = torch.rand(args.batch, 1, 32, 32), torch.randint(0, 10, (args.batch,))

    def train_step():
        fake = G(torch.randn(args.batch, 128), y)
        d_loss = F.softplus(-D(x, y)).mean() + F.softplus(D(fake.detach(), y)).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        D.requires_grad_(False)
        g_loss = F.softplus(-D(fake, y)).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)

    print(f"threads={args.threads} width={args.width} batch={args.batch}")
    print(f"train: {_rate(train_step, args.batch, args.repeats):.0f} real images/s")

    if args.prior:
        from ggl.gan.prior import load_prior

        P = load_prior(args.prior)
    else:
        from ggl.gan.prior import PriorGenerator, freeze

        P = freeze(PriorGenerator(G, 128, 1, 32, 10))
    z, yy = torch.randn(50, P.latent_dim), torch.arange(50) % max(P.num_classes, 1)
    yy = yy if P.conditional else None

    def sample():
        with torch.no_grad():
            P(z, yy)

    def sample_grad():
        zz = z.clone().requires_grad_(True)
        P(zz, yy).square().sum().backward()

    print(f"sample (population of 50, no grad): {_rate(sample, 50, args.repeats * 5):.0f} images/s")
    print(f"sample + grad w.r.t. z:             {_rate(sample_grad, 50, args.repeats * 5):.0f} images/s")


if __name__ == "__main__":
    main()
