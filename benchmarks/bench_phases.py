"""Where a sweep search's CPU goes: CMA-ES's batched evaluations vs Adam's steps, on the sweep's CNN.

    python benchmarks/bench_phases.py [--prior checkpoints/gan_mnist5k.pt] [--seconds 4] [--adaptive]
                                      [--sweep configs/sweep_defenses.yaml]

The search is the sweep file's own (``attack.population``, ``attack.generations``, ``attack.adam_steps``,
``attack.adam_restarts``, ``attack.search_seeds``: CMA-ES 5 generations of 2 x (50 + 1) candidates, then 300
Adam steps on 4 x 2 rows). One CMA-ES generation = the objective on every search's population plus its mean,
as ``cmaes_search`` evaluates it; one Adam step = the loss of the rows, its backward and the optimiser's step, as
``adam_search`` does. The observation is a real private digit's FedSGD gradient at a fresh CNN (4-bit
quantized and attacked adaptively with ``--adaptive``). Both phases are timed in interleaved rounds (CPU-seconds
of this process, one thread) and scaled to the whole search.

Printed: each phase's CPU-seconds per search and CMA-ES's share; the most that any speed-up of the batched
CMA-ES evaluation (``bench_attack.py``'s ``speedup[...]``) can save of a search; Adam's cost per row at 8 and 64
rows (batching more rows, e.g. several victims, is the other lever); the last line is
``cmaes_share: <fraction>``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _attack_setup import DEFAULT_PRIOR, prior, private_observation, rate  # noqa: E402

ROUNDS = 5
SEARCH_KEYS = ("population", "generations", "adam_steps", "adam_restarts", "search_seeds")


def sweep_search(path: Path) -> dict:
    """The search of a sweep file: its ``attack.<key>`` parameters' values."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(path).parameters
    return {k: int(params[f"attack.{k}"].value) for k in SEARCH_KEYS}


def per_call(fn, seconds: float) -> float:
    """CPU-seconds of one call of ``fn``, over about ``seconds`` (``rate``: after a warm-up call)."""
    return 1.0 / rate(fn, 1, seconds, time.process_time)


def adam_step(objective, rows: int):
    """One Adam step's work on ``rows`` latents, as ``adam_search`` repeats it."""
    z = torch.randn(rows, objective.dim, generator=torch.Generator().manual_seed(rows)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)

    def step():
        losses = objective(z)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--seconds", type=float, default=4.0, help="time per phase and round")
    ap.add_argument("--adaptive", action="store_true", help="the 4-bit payload, attacked adaptively")
    ap.add_argument("--sweep", default=str(REPO / "configs" / "sweep_defenses.yaml"), help="the sweep file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    from ggl.attack import GGLObjective, infer_labels
    from ggl.core.allocator import retain_freed_memory

    retain_freed_memory()  # as attack.py
    s = sweep_search(Path(args.sweep))
    G, note = prior(args.prior)
    obs = private_observation("cnn", "default", adaptive=args.adaptive)
    obj = GGLObjective(obs, G, infer_labels(obs), adaptive=args.adaptive)
    seeds, rows = s["search_seeds"], s["adam_restarts"] * s["search_seeds"]
    population = torch.randn(seeds * (s["population"] + 1), obj.dim, generator=torch.Generator().manual_seed(0))

    def generation():
        with torch.no_grad():
            obj(population)
    print(f"{note}; {'adaptive, 4-bit payload' if args.adaptive else 'non-adaptive'}; the search of {args.sweep}: "
          f"CMA-ES {s['generations']} x {s['population']}, Adam {s['adam_steps']} x {s['adam_restarts']}, "
          f"{seeds} search seeds batched; CPU-seconds, one thread")
    cma, adam, wide = [], [], []
    with threadpool_limits(limits=1, user_api="blas"):
        step, wide_step = adam_step(obj, rows), adam_step(obj, 64)
        for _ in range(ROUNDS):  # interleaved: a shared VM's speed drifts within seconds
            cma.append(per_call(generation, args.seconds / 2) * s["generations"])
            adam.append(per_call(step, args.seconds) * s["adam_steps"])
            wide.append(per_call(wide_step, args.seconds / 2))
    c, a = statistics.median(cma), statistics.median(adam)
    share = c / (c + a)
    print(f"CMA-ES: {c:.2f} CPU-s per search; Adam: {a:.2f} CPU-s (medians of {ROUNDS} interleaved rounds)")
    rounds = ", ".join(f"{x / (x + y):.1%}" for x, y in zip(cma, adam))
    print(f"CMA-ES share of the search: {share:.1%} (rounds {rounds}); "
          f"a k-times faster batched evaluation saves (1 - 1/k) of it: at most {share:.1%} of the search")
    per_row_8, per_row_64 = a / s["adam_steps"] / rows, statistics.median(wide) / 64
    print(f"Adam per row: {per_row_8 * 1e3:.2f} ms at {rows} rows, {per_row_64 * 1e3:.2f} ms at 64 rows "
          f"({per_row_8 / per_row_64:.2f}x)")
    print(f"cmaes_share: {share:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
