"""EOT / likelihood attacker vs the expectation (adaptive) attacker on stochastic rounding, paired.

    python benchmarks/bench_eot.py [--victims 8] [--bits 2] [--arch cnn] [--init default]
                                   [--generations 60] [--adam-steps 120] [--threads 1]
                                   [--attackers ggl-l2-adaptive,ggl-eot]

Victims: ``--victims`` private MNIST digits drawn as attack.py draws them (``draw_private``, seed 0;
``mnist5k``, split_seed 0: never seen by the shipped prior ``checkpoints/gan_mnist5k.pt``), one FedSGD gradient each at a fresh ``--arch`` model
(round 0, as the headline), sent through ``{name: quantize, bits: --bits, rounding: stochastic,
range: global}`` with the client's own seeded draws. Every attacker attacks the very same
observations with the same search budget (the sweep's: CMA-ES 50 x ``--generations``, then Adam
``--adam-steps``) and seed. Per victim: PSNR (dB) of each attacker and of the strongest label-only
baseline (``ggl.audit.baselines``: the better of the prior's and the public split's class mean of the
true label, per victim). Last lines: the
mean of each, and the paired difference (EOT - expectation) with its 95% bootstrap CI over victims
(scipy.stats.bootstrap, seeded) and the Wilcoxon signed-rank p-value.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _attack_setup import DEFAULT_PRIOR  # noqa: E402


def victims(n: int, arch: str, init: str, bits: int):
    """([(observation, true image, true label)] of n private digits, stochastic-rounded; the public
    split's class means)."""
    from ggl.attack.observation import Observation
    from ggl.audit.victim import draw_private
    from ggl.config import DataConfig
    from ggl.data.datamodule import load_split
    from ggl.defenses.quantize import quantize_update
    from ggl.models import build_model
    from ggl.core.seeding import generator

    data, split = load_split(DataConfig())
    model = build_model(arch, 1, 10, init=init, seed=0)
    spec = {"name": "quantize", "bits": bits, "rounding": "stochastic", "range": "global"}
    out = []
    for k, i in enumerate(draw_private(split.private, n, seed=0).tolist()):
        x, y = data.images[i:i + 1], data.labels[i:i + 1]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
        sent, _ = quantize_update(grads, bits, "stochastic", "global", generator=generator(0, 0, k, 3))
        obs = Observation(arch=arch, channels=1, num_classes=10, state=model.state_dict(),
                          names=[n for n, _ in model.named_parameters()], update=sent, kind="gradient",
                          batch_size=1, local_steps=1, lr=0.05, local_batch_size=32, defenses=[spec],
                          obs_id=f"victim{k}")
        out.append((obs, x, y))
    from ggl.audit.baselines import public_class_means

    return out, public_class_means(data.images[split.public], data.labels[split.public], 10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", type=int, default=8)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--init", default="default")
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--adam-steps", type=int, default=120)
    ap.add_argument("--attackers", default="ggl-l2-adaptive,ggl-eot")
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from scipy import stats

    from ggl.audit import metrics
    from ggl.attack.attackers import get_attacker
    from ggl.attack.schema import AttackConfig
    from ggl.gan.prior import load_prior

    G = load_prior(args.prior)
    cfg = AttackConfig(optimizer="cmaes_adam", population=50, generations=args.generations, sigma=0.3,
                       adam_steps=args.adam_steps, adam_restarts=8, adam_lr=0.05)
    names = args.attackers.split(",")
    attackers = [get_attacker(n) for n in names]
    print(f"q{args.bits}-stochastic-global, {args.arch} ({args.init} init), round 0 FedSGD, {args.victims} victims, "
          f"cmaes_adam 50 x {args.generations} + {args.adam_steps}, torch threads {args.threads}")
    print("victim label " + " ".join(f"{n:>16}" for n in names) + "   class-mean")
    psnr = {n: [] for n in names}
    base, seconds = [], {n: 0.0 for n in names}
    from ggl.audit.baselines import prior_class_means

    prior_means = prior_class_means(G, 10)
    observed, public_means = victims(args.victims, args.arch, args.init, args.bits)
    for k, (obs, x, y) in enumerate(observed):
        base.append(max(float(metrics.psnr(means[y].clamp(0, 1), x)[0]) for means in (prior_means, public_means)))
        for n, att in zip(names, attackers):
            start = time.perf_counter()
            res = att(obs, G, cfg, seed=1000 + k)
            seconds[n] += time.perf_counter() - start
            psnr[n].append(float(metrics.psnr(res.images.clamp(0, 1), x)[0]))
        print(f"{k:>6} {int(y):>5} " + " ".join(f"{psnr[n][-1]:>16.2f}" for n in names) + f"   {base[-1]:>10.2f}",
              flush=True)
    for n in names:
        print(f"mean PSNR {n}: {np.mean(psnr[n]):.2f} dB ({seconds[n]:.0f} s)")
    print(f"mean PSNR class-mean baseline: {np.mean(base):.2f} dB")
    if len(names) >= 2 and args.victims >= 2:
        a, b = np.array(psnr[names[-1]]), np.array(psnr[names[0]])
        d = a - b
        ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=10000,
                             random_state=np.random.default_rng(0)).confidence_interval
        p = stats.wilcoxon(a, b).pvalue if np.any(d != 0) else 1.0
        print(f"paired {names[-1]} - {names[0]}: {d.mean():+.2f} dB, 95% CI [{ci.low:+.2f}, {ci.high:+.2f}], "
              f"{int((d > 0).sum())}/{len(d)} victims better, Wilcoxon p = {p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
