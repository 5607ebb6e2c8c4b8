"""Candidate evaluations per second: batched (torch.func.vmap over a CMA-ES population) vs one at a time.

    python benchmarks/bench_attack.py [--prior checkpoints/gan_mnist5k.pt] [--population 50]
                                      [--threads 1] [--seconds 10] [--adaptive]

A candidate evaluation is one latent -> G(z, y) -> the victim's trial update at the attacked model
(sigmoid LeNet, DLG init, FedSGD) -> the GGL matching loss: what one CMA-ES candidate costs.
Batched = ``torch.func.vmap`` over the population (``evaluation: batched``); one at a time = the
reference loop, plain autograd per candidate (``evaluation: loop``). Both run in this one process on
the same candidates and must agree on the losses.
The attacked update is a real private MNIST digit's. Also printed: the same without the generator
(images given), i.e. the part that vmap batches beyond the generator's own batching.
The last line is ``speedup: <batched / one-at-a-time evaluations per second>``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _attack_setup import DEFAULT_PRIOR, prior, private_observation, rate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both modes (0 = torch's default, all cores: measure on an idle "
                         "machine; 1 = as attack.yaml, for a shared one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per mode and measurement")
    ap.add_argument("--adaptive", action="store_true", help="trial updates pass the 4-bit quantizer (adaptive attacker)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from threadpoolctl import threadpool_limits

    from ggl.attack import GGLObjective, infer_labels

    G, prior_note = prior(args.prior)
    obs = private_observation("lenet", "dlg", adaptive=args.adaptive)
    labels = infer_labels(obs)
    obj = GGLObjective(obs, G, labels, adaptive=args.adaptive)
    z = torch.randn(args.population, obj.dim, generator=torch.Generator().manual_seed(0))

    with torch.no_grad(), threadpool_limits(limits=1, user_api="blas"):
        a, b = obj(z, "batched"), obj(z, "loop")
        rel = float(((a - b).abs() / b.abs()).max())
        imgs = obj.images(z)
        rates = {}
        for mode in ("batched", "loop"):
            rates[mode] = rate(lambda: obj(z, mode), args.population, args.seconds)
        from ggl.attack.objective import match_loss

        def trial_batched():
            return match_loss(obj.sim.batched(imgs, labels), obj.target)

        def trial_loop():
            return [match_loss(tuple(t.unsqueeze(0) for t in obj.sim.reference(imgs[i], labels)), obj.target)
                    for i in range(len(imgs))]
        rates["update_batched"] = rate(trial_batched, args.population, args.seconds / 2)
        rates["update_loop"] = rate(trial_loop, args.population, args.seconds / 2)

    print(prior_note)
    print(f"torch threads: {torch.get_num_threads()}, population {args.population}, "
          f"{'adaptive (4-bit quantizer)' if args.adaptive else 'non-adaptive'}, batched vs loop max rel. loss diff {rel:.1e}")
    print(f"trial update + loss only (images given): batched {rates['update_batched']:.0f} /s, "
          f"one at a time {rates['update_loop']:.0f} /s, ratio {rates['update_batched'] / rates['update_loop']:.1f}x")
    print(f"candidate evaluations (z -> G -> update -> loss): batched {rates['batched']:.0f} /s, "
          f"one at a time {rates['loop']:.0f} /s")
    print(f"speedup: {rates['batched'] / rates['loop']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
