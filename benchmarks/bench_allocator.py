"""Attack generations per second with glibc's default malloc vs ``ggl.core.allocator.retain_freed_memory``.

    python benchmarks/bench_allocator.py [--population 50] [--threads 0] [--seconds 10]

One generation = a CMA-ES population of latents -> G(z, y) -> every candidate's trial update at the
federation's CNN (544,522 parameters, default init, FedSGD on a real private digit) -> the matching loss,
batched with torch.func.vmap, as the sweep's attacks run it; non-adaptive and adaptive (the 4-bit
quantizer applied to every trial update). Both allocators are measured in this one process: the
default first (a process starts with it; malloc settings cannot be undone reliably), then retained.
System CPU seconds are printed too: the default's extra time is the kernel zeroing fresh pages.
The last line is ``speedup: <retained / default generations per second>`` (adaptive attacker).
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _attack_setup import DEFAULT_PRIOR, prior, private_observation, rate  # noqa: E402


def _system_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default, all cores)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per allocator and attacker")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from threadpoolctl import threadpool_limits

    from ggl.core.allocator import retain_freed_memory
    from ggl.attack import GGLObjective, infer_labels

    G, prior_note = prior(args.prior)
    objectives = {}
    for adaptive in (False, True):
        obs = private_observation("cnn", "default", adaptive=adaptive)
        objectives["adaptive" if adaptive else "non-adaptive"] = GGLObjective(obs, G, infer_labels(obs),
                                                                              adaptive=adaptive)
    z = torch.randn(args.population, objectives["adaptive"].dim, generator=torch.Generator().manual_seed(0))

    results = {}
    with torch.no_grad(), threadpool_limits(limits=1, user_api="blas"):
        for allocator in ("default", "retained"):
            if allocator == "retained" and not retain_freed_memory():
                print("retain_freed_memory() is a no-op here (not glibc): nothing to compare")
                return 1
            for attacker, obj in objectives.items():
                sys_before = _system_seconds()
                per_second = rate(lambda: obj(z), 1, args.seconds)
                results[allocator, attacker] = per_second, _system_seconds() - sys_before

    print(prior_note)
    print(f"torch threads: {torch.get_num_threads()}, population {args.population}, model cnn (544,522 parameters)")
    for (allocator, attacker), (per_second, sys_s) in results.items():
        print(f"{allocator:>8} malloc, {attacker:>12}: {1000 / per_second:6.0f} ms/generation, "
              f"system CPU {sys_s:5.1f} s over {args.seconds:.0f} s")
    ratio = {a: results["retained", a][0] / results["default", a][0] for a in objectives}
    print(f"speedup non-adaptive: {ratio['non-adaptive']:.2f}")
    print(f"speedup: {ratio['adaptive']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
