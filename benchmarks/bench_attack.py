"""Candidate evaluations per second: batched (a whole CMA-ES population per pass) vs one at a time.

    python benchmarks/bench_attack.py [--prior checkpoints/gan_mnist5k.pt] [--population 50]
                                      [--threads 1] [--seconds 10] [--adaptive | --non-adaptive]
                                      [--victims 32] [--device cpu|cuda] [--arch lenet|cnn]

A candidate evaluation is one latent -> G(z, y) -> the victim's trial update at the attacked model
(``--arch``: the sigmoid LeNet at DLG init, the default, or the sweep's CNN at its default init; FedSGD)
-> the GGL matching loss: what one CMA-ES candidate costs.
Batched = ``evaluation: batched``: the population through the generator's CPU copy
(``ggl/attack/fast_generator.py``) and every candidate's gradient from one backward
(``ggl/attack/per_candidate.py``; ``torch.func.vmap`` for nets it does not cover); one at a time = the
reference loop, the generator as it is and plain autograd per candidate (``evaluation: loop``). Both
run in this one process on the same candidates and must agree on the losses. The two are timed in
interleaved rounds and the medians printed (a shared VM's speed drifts within seconds).
The attacked update is a real private MNIST digit's. Also printed: the trial update (+ the quantizer when
adaptive) + loss alone (images given) and the generator alone, the two halves of a batched evaluation.
Both modes (non-adaptive, adaptive: the trial update passes the 4-bit quantizer) run by default, each
printing ``speedup[<mode>]: <batched / one-at-a-time evaluations per second>`` (the median of the
interleaved rounds' ratios, with their minimum).

Victims batched: ``--victims`` victims' populations (victims x population candidates, each victim's
own label) through one ``vmap`` against one victim's population per pass, per candidate; then the
process's peak resident memory (``ru_maxrss``) after that pass, i.e. what an attack with that many
victims batched needs at most. The last line is ``speedup: <the smallest ratio over the modes>``.
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

ROUNDS = 5  # batched/loop measurement rounds per mode, interleaved
GEMM_SIZE = 1024  # the matrix product that stands for this core's float32 speed
_INIT = {"lenet": "dlg", "cnn": "default"}  # each victim model's init, as the audits use it


def _clock(args):
    """One thread on the CPU: CPU-seconds of this process (other jobs on a shared machine do not count);
    else wall seconds, after the GPU's queued work is done."""
    if args.device != "cpu":
        def synced_wall():
            torch.cuda.synchronize()
            return time.perf_counter()
        return synced_wall
    return time.process_time if args.threads == 1 else time.perf_counter


def measure(args, G, adaptive: bool) -> float:
    """Batched vs one-at-a-time candidate evaluations of one mode; prints its lines, returns the ratio."""
    from threadpoolctl import threadpool_limits

    from ggl.attack import GGLObjective, infer_labels

    obs = private_observation(args.arch, _INIT[args.arch], adaptive=adaptive)
    labels = infer_labels(obs)
    obj = GGLObjective(obs, G, labels, adaptive=adaptive, device=args.device)
    labels = obj.labels  # on the search's device
    z = torch.randn(args.population, obj.dim, generator=torch.Generator().manual_seed(0)).to(args.device)
    mode_name = "adaptive (4-bit quantizer)" if adaptive else "non-adaptive"
    if args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), threadpool_limits(limits=1, user_api="blas"):
        a, b = obj(z, "batched"), obj(z, "loop")
        rel = float(((a - b).abs() / b.abs()).max())
        imgs = obj.images(z)
        rates, ratios = {"batched": [], "loop": []}, []
        for _ in range(ROUNDS):  # interleaved rounds, medians: a shared VM's speed drifts within seconds
            for mode in ("batched", "loop"):
                rates[mode].append(rate(lambda: obj(z, mode), args.population, args.seconds / ROUNDS, _clock(args)))
            ratios.append(rates["batched"][-1] / rates["loop"][-1])
        rates = {mode: statistics.median(r) for mode, r in rates.items()}

        def trial_batched():
            return obj.image_losses(imgs, z)

        def trial_loop():
            return [obj.image_loss_reference(imgs[i], z[i:i + 1]) for i in range(len(imgs))]
        rates["update_batched"] = rate(trial_batched, args.population, args.seconds / 2, _clock(args))
        rates["update_loop"] = rate(trial_loop, args.population, args.seconds / 2, _clock(args))
        rates["generator"] = rate(lambda: obj.images(z), args.population, args.seconds / 2, _clock(args))
    ratio = statistics.median(ratios)
    print(f"[{mode_name}] torch threads: {torch.get_num_threads()}, population {args.population}, "
          f"batched vs loop max rel. loss diff {rel:.1e}")
    update = "trial update + quantizer" if adaptive else "trial update"
    print(f"[{mode_name}] {update} + loss only (images given): batched {rates['update_batched']:.0f} /s, "
          f"one at a time {rates['update_loop']:.0f} /s, ratio {rates['update_batched'] / rates['update_loop']:.1f}x; "
          f"generator alone, batched: {rates['generator']:.0f} /s")
    print(f"[{mode_name}] candidate evaluations (z -> G -> update -> loss): batched {rates['batched']:.0f} /s, "
          f"one at a time {rates['loop']:.0f} /s (medians of {ROUNDS} interleaved rounds; per-round ratios "
          f"{', '.join(f'{r:.1f}' for r in ratios)})")
    if not adaptive:  # bf16: is the generator (the batched path's larger half) faster in it on this CPU?
        import copy

        Gb = copy.deepcopy(obj.G).to(torch.bfloat16)
        zb, yb = z.reshape(-1, obj.latent_dim).to(torch.bfloat16), labels.repeat(len(z))
        with torch.no_grad():
            bf16 = rate(lambda: Gb(zb, yb), args.population, args.seconds / 2, _clock(args))
            err = float((Gb(zb, yb).float() - obj.images(z).flatten(0, 1)).abs().max())
        print(f"[{mode_name}] generator in bf16: {bf16:.0f} /s vs float32 {rates['generator']:.0f} /s "
              f"({bf16 / rates['generator']:.2f}x), max pixel error {err:.3f}")
    if args.device != "cpu":
        print(f"[{mode_name}] peak GPU memory (torch.cuda.max_memory_allocated) over this mode: "
              f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GB")
    if args.device == "cpu":
        floor(args, obj, z, rates)
    print(f"speedup[{'adaptive' if adaptive else 'non-adaptive'}]: {ratio:.2f} (median of {ROUNDS} rounds; "
          f"per-round minimum {min(ratios):.2f})")
    return ratio


def floor(args, obj, z, rates) -> None:
    """The products' FLOPs per candidate, each mode's GFLOP/s on them and one large float32 GEMM's."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        obj.image_loss_reference(obj.images(z[:1], obj.G)[0], z[:1])
    flops = counter.get_total_flops()
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=torch.Generator().manual_seed(2))
    gemm = rate(lambda: torch.mm(a, a), 1, args.seconds / 2, _clock(args)) * 2 * GEMM_SIZE ** 3
    batched, loop = rates["batched"] * flops, rates["loop"] * flops
    print(f"arithmetic floor: {flops / 1e6:.1f} MFLOP of products per candidate (update + loss + generator); "
          f"batched runs them at {batched / 1e9:.0f} GFLOP/s, one at a time at {loop / 1e9:.0f}, one "
          f"{GEMM_SIZE}x{GEMM_SIZE} float32 GEMM at {gemm / 1e9:.0f}: the batched path is at "
          f"{batched / gemm:.0%} of it, and a path at that speed would be {gemm / loop:.1f}x this loop")


def victims_batched(args, G) -> None:
    """``args.victims`` victims' populations in one vmap vs one victim's per pass; then peak memory."""
    import resource

    from torch.func import vmap

    from ggl.attack import GGLObjective, infer_labels

    obs = private_observation(args.arch, _INIT[args.arch])
    obj = GGLObjective(obs, G, infer_labels(obs), device=args.device)
    V, P = args.victims, args.population
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(V * P, obj.dim, generator=gen).to(args.device)
    ys = torch.randint(0, 10, (V, 1), generator=gen).repeat_interleave(P, 0).to(args.device)  # each victim its own label

    def all_at_once():  # images, trial updates and losses, as one victim's pass does
        from ggl.attack.objective import match_loss

        return match_loss(vmap(obj.sim.update)(obj.images(z), ys), obj.target)

    def one_victim():
        return obj(z[:P])
    with torch.no_grad():
        per_victim = rate(one_victim, P, args.seconds / 2, _clock(args))
        together = rate(all_at_once, V * P, args.seconds / 2, _clock(args))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if args.device != "cpu":
        print(f"peak GPU memory after a {V}-victim batched pass: {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GB")
    print(f"victims batched: {V} victims x population {P} in one vmap {together:.0f} candidates/s vs one victim's "
          f"population per pass {per_victim:.0f} /s: ratio {together / per_victim:.2f}x")
    print(f"peak memory (max RSS of this process) after a {V}-victim batched pass: {peak_gb:.2f} GB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both modes (0 = torch's default, all cores: measure on an idle "
                         "machine; 1 = as attack.yaml, for a shared one)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time per mode and measurement")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--adaptive", action="store_true", help="only the adaptive mode (4-bit quantizer)")
    only.add_argument("--non-adaptive", action="store_true", help="only the non-adaptive mode")
    ap.add_argument("--victims", type=int, default=32, help="victims batched together (0 = skip that part)")
    ap.add_argument("--arch", default="lenet", choices=sorted(_INIT), help="the attacked model")
    ap.add_argument("--device", default="cpu", help="where the search runs: cpu or cuda (rates per synchronised "
                                                     "wall second there)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ggl.core.allocator import retain_freed_memory

    retain_freed_memory()  # as attack.py
    G, prior_note = prior(args.prior)
    print(prior_note)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch sees no CUDA GPU here; use --device cpu", file=sys.stderr)
        return 2
    print(f"device {args.device}; rates per "
          f"{'CPU-second of this process' if args.threads == 1 and args.device == 'cpu' else 'wall second'}")
    modes = [True] if args.adaptive else [False] if args.non_adaptive else [False, True]
    ratios = [measure(args, G, adaptive) for adaptive in modes]
    if args.victims:
        victims_batched(args, G)
    print(f"speedup: {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
