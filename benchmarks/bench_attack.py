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
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _rate(fn, n_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += n_per_call
    return done / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(REPO / "checkpoints" / "gan_mnist5k.pt"))
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
    from ggl.attack.observation import Observation
    from ggl.config import DataConfig
    from ggl.data.datamodule import load_split
    from ggl.defenses.quantize import quantize_update
    from ggl.models import build_model

    if Path(args.prior).is_file():
        from ggl.gan.prior import load_prior

        G = load_prior(args.prior)
        prior_note = f"prior: {args.prior}"
    else:
        from ggl.models.gan import Generator

        G = Generator(128, 1, 32, 10).eval().requires_grad_(False)
        prior_note = (f"prior: {args.prior} not found -> an untrained generator of the prior's architecture "
                      f"(speed only)")

    data, split = load_split(DataConfig())
    idx = split.private[:1]
    x, y = data.images[idx], data.labels[idx]
    model = build_model("lenet", 1, 10, init="dlg", seed=0)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
    defenses = []
    if args.adaptive:
        grads, _ = quantize_update(grads, 4)
        defenses = [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]
    obs = Observation(arch="lenet", channels=1, num_classes=10, state=model.state_dict(),
                      names=[n for n, _ in model.named_parameters()], update=grads, kind="gradient",
                      batch_size=1, local_steps=1, lr=0.05, local_batch_size=32, defenses=defenses)
    labels = infer_labels(obs)
    obj = GGLObjective(obs, G, labels, adaptive=args.adaptive)
    z = torch.randn(args.population, obj.dim, generator=torch.Generator().manual_seed(0))

    with torch.no_grad(), threadpool_limits(limits=1, user_api="blas"):
        a, b = obj(z, "batched"), obj(z, "loop")
        rel = float(((a - b).abs() / b.abs()).max())
        imgs = obj.images(z)
        rates = {}
        for mode in ("batched", "loop"):
            rates[mode] = _rate(lambda: obj(z, mode), args.population, args.seconds)
        from ggl.attack.objective import match_loss

        def trial_batched():
            return match_loss(obj.sim.batched(imgs, labels), obj.target)

        def trial_loop():
            return [match_loss(tuple(t.unsqueeze(0) for t in obj.sim.reference(imgs[i], labels)), obj.target)
                    for i in range(len(imgs))]
        rates["update_batched"] = _rate(trial_batched, args.population, args.seconds / 2)
        rates["update_loop"] = _rate(trial_loop, args.population, args.seconds / 2)

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
