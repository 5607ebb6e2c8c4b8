"""The grid attackers' Adam step: the one-node factored path (``factored.outer_loss``) vs autograd through the
materialised updates, on the sweep's CNN.

    python benchmarks/bench_grid_adam.py [--rows 8] [--seconds 4] [--threads 1]
                                         [--attackers ggl-cell,ggl-l2-observed-grid,ggl-eot,ggl-cell@sign,...]

An Adam step = the loss of ``--rows`` latents (the sweep's 4 restarts x 2 search seeds = 8) and its backward,
what the search's Adam phase repeats 300 times per victim (the bulk of a grid attacker's CPU). The observation
is a real private digit's 4-bit (global) payload at a fresh CNN: nearest rounding, stochastic for ggl-eot
(its exact likelihood, ``factored.tent_kernel``); ``<attacker>@sign``: the ``sign`` payload (1 bit + a scale
per tensor). Both paths run in this one process,
timed in interleaved rounds (CPU-seconds of this process at one thread); they must agree on the losses and the
gradients. Also printed: ggl-l2's step on the same payload (the non-adaptive attacker, for scale). Last line
per attacker: ``speedup[<attacker>]: <dense ms / factored ms>`` (median of the rounds, with their minimum).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _attack_setup import DEFAULT_PRIOR, prior, private_observation  # noqa: E402

ROUNDS = 5


def step_ms(objective, z: torch.Tensor, seconds: float) -> float:
    """CPU milliseconds of one loss + backward of the rows z (after a warm-up step)."""
    def step():
        z.grad = None
        objective(z).sum().backward()
    step()
    done, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        step()
        done += 1
    return (time.process_time() - start) / done * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0, help="per path and round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--attackers", default="ggl-cell,ggl-l2-observed-grid,ggl-eot,ggl-cell@sign,"
                                           "ggl-l2-observed-grid@sign")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ggl.attack import GGLObjective, infer_labels
    from ggl.attack.attackers import get_attacker
    from ggl.config import AttackConfig
    from ggl.core.allocator import retain_freed_memory
    from ggl.defenses.sign import sign_update

    retain_freed_memory()  # as attack.py
    G, note = prior(DEFAULT_PRIOR)
    print(note)
    obs = private_observation("cnn", "default", adaptive=True)
    stochastic = private_observation("cnn", "default", adaptive=True, rounding="stochastic")
    fp32 = private_observation("cnn", "default")
    signed = dataclasses.replace(fp32, update=sign_update(fp32.update)[0], defenses=[{"name": "sign"}])
    labels = infer_labels(obs)
    cfg = AttackConfig(device="cpu")
    z = torch.randn(args.rows, G.latent_dim, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    base = step_ms(GGLObjective(obs, G, labels, device="cpu"), z, args.seconds)
    print(f"torch threads {torch.get_num_threads()}, {args.rows} rows; ggl-l2 (no grid) Adam step: {base:.1f} ms")
    for name in args.attackers.split(","):
        attacker, _, payload = name.partition("@")
        observed = signed if payload == "sign" else stochastic if attacker == "ggl-eot" else obs
        objective = get_attacker(attacker).objective(observed, G, cfg, labels, None)
        grads = {}
        for factored in (True, False):
            objective.factored_trial = factored
            z.grad = None
            loss = objective(z)
            loss.sum().backward()
            grads[factored] = (loss.detach(), z.grad.clone())
        loss_diff = float(((grads[True][0] - grads[False][0]).abs() / grads[False][0].abs()).max())
        grad_diff = float((grads[True][1] - grads[False][1]).norm() / grads[False][1].norm())
        times = {True: [], False: []}
        for _ in range(ROUNDS):
            for factored in (True, False):
                objective.factored_trial = factored
                times[factored].append(step_ms(objective, z, args.seconds / ROUNDS))
        ratios = [d / f for f, d in zip(times[True], times[False])]
        fast, dense = statistics.median(times[True]), statistics.median(times[False])
        print(f"[{name}] Adam step: factored {fast:.1f} ms, dense {dense:.1f} ms (medians of {ROUNDS} interleaved "
              f"rounds; {fast / base:.2f}x ggl-l2's); max rel. loss diff {loss_diff:.1e}, rel. gradient diff "
              f"{grad_diff:.1e}")
        print(f"speedup[{name}]: {statistics.median(ratios):.2f} (per-round minimum {min(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
