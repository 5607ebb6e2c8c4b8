"""Leakage vs CPU-seconds for each search (the budget curve), on fixed victims.

    python benchmarks/bench_budget.py [--victims 8] [--threads 1] [--arms today,new,...]
                                      [--trained-round 2] [--out DIR [--overwrite]] [--today-at COMMIT]

Victims: ``--victims`` private MNIST digits (one update each) captured by two short federations of
the sweep's protocol (CNN, mnist5k, 1 local epoch, momentum 0.9): no defence and the 4-bit global
quantizer, at round 0 (untrained) and at ``--trained-round``. The 4-bit setting is attacked
adaptively (the attacker applies the known quantizer), as the sweep's strongest attacker does.
The federations are cached under ``runs/bench_budget/`` and reused.

For each search (an "arm") and each victim, the search runs once with its full budget; a watcher
records the best reconstruction's PSNR and re-identification at checkpoints along the way, with the process CPU-seconds
(``time.process_time``, one torch thread) spent in the search so far (the watcher's own cost is
subtracted), so one run gives the whole curve of that arm. Each point: mean PSNR over victims with
a 95% bootstrap CI, and the re-identification rate (``reid_top1_feature_class``, the report's identity
metric: the victim ranks first among the private images of its class, in the public classifier's
feature space), per (setting, round).

Arms:
  today      the sweep's attack before this benchmark: CMA-ES 60 generations x 50, then Adam 120 steps x 8
  cmaes      CMA-ES alone, 120 generations x 50 (its first 60 generations are today's CMA-ES phase,
             drawn identically: today's curve up to 60 units is this curve)
  adam       Adam alone, 8 random restarts in one batch, 60 steps, lr 0.1 (the default)
  small      CMA-ES 15 x 50 then Adam 30 x 8 (a quarter of today's budget), lr 0.1 (the default)
  new        the new default (configs/attack.yaml): CMA-ES 5 x 50, then Adam 160 steps on its 4 best
             candidates at lr 0.1 (today's curve shows CMA-ES generations past ~10 buy little and Adam
             steps buy most; Adam's step costs about its number of restarts)
  c5r3a115   the default before the factored linear gradients made the search cheaper (5 + 3 x 115)
  c5r2a150   the previous default (5 x 50, then Adam 150 steps x 2), which the headline sweep keeps
  c10a40, adam70, p20a50, c15a30, ...: the candidates measured on the way to ``new`` (see ARMS)
  c5r2a100, c5r2a300, c5r4a300, c10r8a400: the round-9 curve (``--trained-round 9 --non-adaptive``):
             the sweep's search against shorter and longer Adam phases and a much larger search

``--non-adaptive``: q4 is attacked by ggl-l2 (the L2 GGL attacker of the headline's first threat model)
instead of ggl-l2-adaptive, whose own-grid model of the quantizer is not the client's at trained rounds.

Two baselines. ``today`` runs today's search on this checkout's code, so it separates what the search
saves from what the kernels save. ``--today-at COMMIT`` also runs today's search on the code of COMMIT
(a temporary git worktree; per victim a child process with the same victim, prior and thread count):
arm ``today@COMMIT``. With COMMIT = 90e0c65, the last commit before the attack-cost kernels, that is
the issue's "today's sweep attack": today's search on today's code. The arms take turns on each victim,
in reversed order every other victim, so a drift of the machine's speed (tens of percent over minutes
on a shared VM) falls on all of them alike.

Prints the table, writes ``<out>/budget.png`` and ``<out>/budget.json``. Per baseline, per cell: the
check "new's mean PSNR >= the baseline's CI low and new's CPU-seconds <= the baseline's / 4", and the
paired difference new - baseline on the same victims (mean, 95% CI, Wilcoxon p): the comparison that
n = 8 victims can support. The last line is ``leakage_per_cpu_second_ratio: <x>``: (mean PSNR per
CPU-second of ``new``) / (that of the baseline), averaged over the cells, against ``today@COMMIT``
where it ran, else ``today``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
# --code DIR: import ggl from DIR (a checkout of another commit: today's search on today's kernels)
CODE = Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv[:-1] else REPO
sys.path.insert(0, str(CODE))

from _attack_setup import DEFAULT_PRIOR, prior  # noqa: E402
from _output import output_folder  # noqa: E402

from ggl.audit.reid import HEADLINE  # noqa: E402
from _imports import first  # noqa: E402

paired = first("ggl.core.stats:paired", "ggl.stats:paired")  # this checkout's, or --code's older layout


def _cmaes_adam(generations: int, adam_steps: int, adam_restarts: int, adam_lr=None, population: int = 50) -> dict:
    """A CMA-ES -> Adam arm; ``adam_lr`` None = the schema's default."""
    arm = dict(optimizer="cmaes_adam", population=population, generations=generations, adam_steps=adam_steps,
               adam_restarts=adam_restarts, sigma=0.3)
    return arm if adam_lr is None else {**arm, "adam_lr": adam_lr}


TODAY = _cmaes_adam(60, 120, 8)
# the new default: measured below; keep in step with configs/attack.yaml
NEW = _cmaes_adam(5, 160, 4, 0.1)
ARMS = {
    "today": TODAY,
    "cmaes": dict(optimizer="cmaes", population=50, generations=120, sigma=0.3),
    "adam": dict(optimizer="adam", adam_steps=60, adam_restarts=8),
    "small": _cmaes_adam(15, 30, 8),
    "new": NEW,
    # candidates measured on the way to NEW: c<generations>r<restarts>a<Adam steps>, p<population>
    "c10a40": _cmaes_adam(10, 40, 8, 0.1),
    "adam70": dict(optimizer="adam", adam_steps=70, adam_restarts=8, adam_lr=0.1),
    "p20a50": _cmaes_adam(20, 50, 8, 0.1, population=20),
    "c5a50": _cmaes_adam(5, 50, 8, 0.1),
    "c10r4a80": _cmaes_adam(10, 80, 4, 0.1),
    "c10a40lr2": _cmaes_adam(10, 40, 8, 0.2),
    "p20g25a40": _cmaes_adam(25, 40, 8, 0.1, population=20),
    "c10r2a150": _cmaes_adam(10, 150, 2, 0.1),
    "c5r4a100": _cmaes_adam(5, 100, 4, 0.1),
    "c10r4a80lr05": _cmaes_adam(10, 80, 4, 0.05),
    "c5r2a150": _cmaes_adam(5, 150, 2, 0.1),  # the previous default, which the headline sweep keeps
    "c5r1a250": _cmaes_adam(5, 250, 1, 0.1),
    "c15a30": _cmaes_adam(15, 30, 8, 0.1),
    "c5r3a150": _cmaes_adam(5, 150, 3, 0.1),
    "c5r4a150": _cmaes_adam(5, 150, 4, 0.1),
    "c10r3a120": _cmaes_adam(10, 120, 3, 0.1),
    "c5r3a115": _cmaes_adam(5, 115, 3, 0.1),
    "c5r6a115": _cmaes_adam(5, 115, 6, 0.1),
    "c5r4a170": _cmaes_adam(5, 170, 4, 0.1),  # measured as `new` at 7e3663b: 3.99-4.83x the CPU, too close to 4
    "c10r5a130": _cmaes_adam(10, 130, 5, 0.1),
    # the round-9 curve (issue 27): the sweep's search against longer Adam phases and a much larger search
    "c5r2a100": _cmaes_adam(5, 100, 2, 0.1),
    "c5r2a300": _cmaes_adam(5, 300, 2, 0.1),
    "c5r4a300": _cmaes_adam(5, 300, 4, 0.1),
    "c10r8a400": _cmaes_adam(10, 400, 8, 0.1),
}
CHECKPOINTS = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240)
Q4 = [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]


def federations(victims: int, trained_round: int, threads: int) -> Dict[str, Path]:
    """{setting: run folder} of the two short federations with audit captures (cached)."""
    from ggl.config import load_config
    run_federation = first("ggl.jobs.federation:run_federation", "ggl.fl.run:run_federation")

    out = {}
    for setting, chain in (("fp32", []), ("q4", Q4)):
        name = f"fed-{setting}-v{victims}-r{trained_round}"
        latest = REPO / "runs" / "bench_budget" / name / "latest"
        if not (latest / "results.json").is_file():
            over = [f"output_dir={REPO / 'runs' / 'bench_budget'}", f"name={name}", "logger.mode=disabled",
                    "model.name=cnn", "data.name=mnist5k", f"fl.rounds={trained_round + 1}", "fl.local_epochs=1.0",
                    f"fl.eval_every={trained_round + 1}", f"audit.rounds=[0,{trained_round}]",
                    f"audit.num_images={victims}", "audit.batch_size=1", "trainer.accelerator=cpu",
                    "trainer.enable_progress_bar=false", f"defenses={json.dumps(chain)}"]
            run_federation(load_config("fed_fp32.yaml", over))
            torch.set_num_threads(threads)
        out[setting] = latest.resolve()
    return out


def attack_curve(obs, truth: torch.Tensor, G, cfg, seed: int, reid) -> List[dict]:
    """[{units, cpu_s, psnr, reid}] along one search; CPU-seconds exclude the watcher's own work.
    ``reid(images)``: the victim's re-identification score of a reconstruction."""
    from ggl.attack import attack
    psnr = first("ggl.audit.metrics:psnr", "ggl.metrics:psnr")

    points, spent_watching = [], [0.0]
    start = time.process_time()

    def watch(s):
        if s.step in CHECKPOINTS or s.step == s.total:
            t0 = time.process_time()
            cpu = t0 - start - spent_watching[0]
            x = s.images()
            score = float(psnr(x, truth)[0]) if x is not None else float("nan")
            identified = reid(x) if x is not None else float("nan")
            spent_watching[0] += time.process_time() - t0
            points.append({"units": s.step, "cpu_s": cpu, "psnr": score, "reid": identified})

    res = attack(obs, G, cfg, seed, watch=watch)
    end = time.process_time() - start - spent_watching[0]
    final = float(psnr(res.images, truth)[0])
    points.append({"units": points[-1]["units"] if points else 0, "cpu_s": end, "psnr": final,
                   "reid": reid(res.images), "final": True})
    return points


def ci95(values: np.ndarray, seed: int = 0) -> tuple:
    """Mean and 95% bootstrap CI over victims."""
    from scipy.stats import bootstrap

    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    r = bootstrap((values,), np.mean, n_resamples=2000, random_state=seed, method="percentile")
    return float(values.mean()), float(r.confidence_interval.low), float(r.confidence_interval.high)


OUT_FILES = ("budget.json", "budget.png", "curves.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", type=int, default=8)
    ap.add_argument("--trained-round", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", default="today,adam,new", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--settings", default="fp32,q4")
    ap.add_argument("--non-adaptive", action="store_true", help="attack q4 with ggl-l2 (the non-adaptive L2 "
                    "attacker, the headline's first threat model) instead of ggl-l2-adaptive")
    ap.add_argument("--rounds", default="0,trained", help="0, trained or both")
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR))
    ap.add_argument("--out", default=None, help="output folder (default: runs/benchmarks/bench_budget/; "
                    "reports/budget only with --overwrite)")
    ap.add_argument("--overwrite", action="store_true", help="replace the files already in --out")
    ap.add_argument("--code", default=str(REPO), help="import ggl from this checkout (default: this one)")
    ap.add_argument("--today-at", default="", metavar="COMMIT",
                    help="also run the today arm on the code of COMMIT (a temporary git worktree; a child process "
                         "per victim, taking turns with the other arms): today's search on today's kernels, the "
                         "issue's baseline; its arm is named today@COMMIT")
    ap.add_argument("--victim", type=int, default=None, help=argparse.SUPPRESS)  # one victim per cell (the child)
    ap.add_argument("--curves", default="", help="comma-separated curves.json files of earlier runs (e.g. one "
                    "per setting, run side by side): make the table, plot and ratio from them, search nothing")
    args = ap.parse_args(argv)
    args.out = str(output_folder("bench_budget", args.out, args.overwrite, OUT_FILES))
    torch.set_num_threads(args.threads)

    retain_freed_memory = first("ggl.core.allocator:retain_freed_memory", "ggl.allocator:retain_freed_memory")
    from ggl.attack.observation import Observation
    from ggl.attack.schema import AttackConfig
    from ggl.audit.evaluate import Evaluator
    from ggl.audit.truth import find_captures
    derived_seed = first("ggl.core.seeding:derived_seed", "ggl.seeding:derived_seed")

    retain_freed_memory()
    arms = [a for a in args.arms.split(",") if a]
    results: Dict[str, dict] = {}
    if args.curves:
        for f in args.curves.split(","):
            results.update(json.loads(Path(f).read_text()))
        arms = list(dict.fromkeys(r["arm"] for r in results.values()))
        note = f"curves from {args.curves}"
    else:
        G, note = prior(args.prior)
        import ggl

        note += f"; ggl imported from {Path(ggl.__file__).resolve().parent.parent}"
        feds = federations(args.victims, args.trained_round, args.threads)
        evaluator = Evaluator()
    want_rounds = {"0": [0], "trained": [args.trained_round]}.get(args.rounds, [0, args.trained_round])
    t_all = time.perf_counter()
    with contextlib.ExitStack() as stack:
        old_code = stack.enter_context(worktree(args.today_at)) if args.today_at and not args.curves else None
        if old_code is not None:
            arms.append(f"today@{args.today_at}")
        for setting in ([] if args.curves else args.settings.split(",")):
            caps = find_captures(feds[setting] / "audit")
            pairs = [p for v in caps.values() for p in v]
            for rnd in want_rounds:
                mine = list(enumerate([(o, t) for o, t in pairs if Observation.load(o).round == rnd][:args.victims]))
                if args.victim is not None:
                    mine = mine[args.victim:args.victim + 1]
                cfgs = {arm: AttackConfig(**{**ARMS[arm], "adaptive": setting != "fp32" and not args.non_adaptive,
                                             "device": "cpu",
                                             "progress": False}) for arm in arms if not arm.startswith("today@")}
                for cfg in cfgs.values():
                    cfg.check()
                curves: Dict[str, list] = {arm: [] for arm in arms}
                for i, (k, (obs_path, truth_path)) in enumerate(mine):
                    obs = Observation.load(obs_path)
                    gt, truth = evaluator.truth(truth_path, obs.obs_id)
                    gallery = evaluator.gallery(gt.dataset)

                    def reid(images, gallery=gallery, victims=gt.indices):
                        return float(gallery.score(images.cpu(), victims)[0][HEADLINE])
                    # the arms take turns on each victim, in reversed order every other victim: the VM's speed
                    # drifts by tens of percent over minutes, and so a drift falls on every arm alike
                    for arm in (arms if i % 2 == 0 else arms[::-1]):
                        curves[arm].append(
                            old_code_curve(old_code, args, setting, rnd, k) if arm.startswith("today@") else
                            attack_curve(obs, truth, G, cfgs[arm], derived_seed(0, 0x6617, k), reid))
                for arm in arms:
                    results[f"{setting}|r{rnd}|{arm}"] = {"setting": setting, "round": rnd, "arm": arm,
                                                          "curves": curves[arm]}
                    fin = np.array([c[-1]["psnr"] for c in curves[arm]])
                    cpu = np.mean([c[-1]["cpu_s"] for c in curves[arm]])
                    print(f"[{time.perf_counter() - t_all:6.0f} s wall] {setting} round {rnd} {arm}: "
                          f"PSNR {fin.mean():.2f} dB, {cpu:.1f} CPU-s per victim", file=sys.stderr, flush=True)
                Path(args.out).mkdir(parents=True, exist_ok=True)  # kept as it goes: a stopped run keeps its data
                (Path(args.out) / "curves.json").write_text(json.dumps(results))
    ARMS.update({a: {**TODAY, "code": a.split("@", 1)[1]} for a in arms if a.startswith("today@")})
    # ------------------------------------------------------------------ the table
    print(note)
    print(f"torch threads {torch.get_num_threads()}, {args.victims} victims per cell, CNN (sweep protocol), "
          f"fp32 non-adaptive, q4 {'non-adaptive (ggl-l2)' if args.non_adaptive else 'adaptive'}; CPU-seconds per victim (process time); re-id: the share of "
          f"victims ranked first among the private images of their class ({HEADLINE})")
    print(f"{'setting':7} {'round':>5} {'arm':9} {'units':>6} {'CPU-s':>7} {'PSNR':>6} {'95% CI':>15} {'re-id':>6}")
    rows = []
    for key, r in results.items():
        n_pts = min(len(c) for c in r["curves"])
        for i in range(n_pts):
            ps = np.array([c[i]["psnr"] for c in r["curves"]])
            ids = np.array([c[i].get("reid", np.nan) for c in r["curves"]], dtype=float)
            cpu = float(np.mean([c[i]["cpu_s"] for c in r["curves"]]))
            m, lo, hi = ci95(ps)
            final = bool(r["curves"][0][i].get("final"))
            row = {"setting": r["setting"], "round": r["round"], "arm": r["arm"], "units": r["curves"][0][i]["units"],
                   "cpu_s": cpu, "psnr": m, "lo": lo, "hi": hi, "reid": float(np.mean(ids)), "final": final,
                   "per_victim_psnr": ps.tolist()}
            rows.append(row)
            print(f"{r['setting']:7} {r['round']:>5} {r['arm']:9} {'end' if final else row['units']:>6} {cpu:7.2f} "
                  f"{m:6.2f} [{lo:6.2f}, {hi:6.2f}] {row['reid']:6.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps({"rows": rows, "arms": {a: ARMS[a] for a in arms},
                                                 "victims": args.victims, "threads": args.threads,
                                                 "command": " ".join(sys.argv)}, indent=1))
    plot(rows, out / "budget.png")
    print(f"plot: {out / 'budget.png'}")

    # ------------------------------------------------------------------ new vs today
    baselines = [a for a in arms if a.startswith("today@")] + (["today"] if "today" in arms else [])
    if "new" in arms and baselines:
        finals = {(r["setting"], r["round"], r["arm"]): r for r in rows if r["final"]}
        ratio = {}
        for base in baselines:
            print(f"new vs {base} ({'this code' if base == 'today' else 'the code of ' + base.split('@')[1]}):")
            ok_all, eff = True, []
            for (setting, rnd, arm), old in finals.items():
                if arm != base or (setting, rnd, "new") not in finals:
                    continue
                new = finals[(setting, rnd, "new")]
                keeps = new["psnr"] >= old["lo"]
                cheap = new["cpu_s"] <= old["cpu_s"] / 4
                ok_all &= keeps and cheap
                eff.append((new["psnr"] / new["cpu_s"]) / (old["psnr"] / old["cpu_s"]))
                diff = paired(new["per_victim_psnr"], old["per_victim_psnr"])  # None under 2 victims
                paired_text = ("paired: n/a (one victim)" if diff is None else
                               f"paired new - {base} {diff.mean_diff:+.2f} dB [{diff.ci.low:+.2f}, "
                               f"{diff.ci.high:+.2f}], Wilcoxon p = {diff.p_value:.2g}")
                print(f"  {setting} round {rnd}: new {new['psnr']:.2f} dB (re-id {new['reid']:.2f}) in "
                      f"{new['cpu_s']:.2f} CPU-s vs {base} {old['psnr']:.2f} dB [{old['lo']:.2f}, {old['hi']:.2f}] "
                      f"(re-id {old['reid']:.2f}) in {old['cpu_s']:.2f} CPU-s: CPU ratio "
                      f"{old['cpu_s'] / new['cpu_s']:.2f}x, leakage kept: {'yes' if keeps else 'NO'}, <= 1/4 CPU: "
                      f"{'yes' if cheap else 'NO'}; {paired_text}")
            ratio[base] = float(np.mean(eff))
            print(f"  all cells meet the target: {'yes' if ok_all else 'NO'}; leakage per CPU-second, new / {base}: "
                  f"{ratio[base]:.2f}")
        print(f"leakage_per_cpu_second_ratio: {ratio[baselines[0]]:.2f}")  # vs the baseline where run
    return 0


@contextlib.contextmanager
def worktree(commit: str):
    """A temporary git worktree of ``commit`` (removed afterwards)."""
    import signal
    import subprocess
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still remove the worktree
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(tree), commit],
                       check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def old_code_curve(tree: Path, args, setting: str, rnd: int, k: int) -> List[dict]:
    """Victim ``k``'s today curve on the code in ``tree``: this script in a child process importing ggl from
    there (the victims and the prior are this checkout's; CPU-seconds count inside the search only)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        child = subprocess.run(
            [sys.executable, __file__, "--code", str(tree), "--arms", "today", "--out", out, "--victim", str(k),
             "--victims", str(args.victims), "--trained-round", str(args.trained_round), "--threads",
             str(args.threads), "--settings", setting, "--rounds", "0" if rnd == 0 else "trained",
             "--prior", args.prior], capture_output=True, text=True)
        if child.returncode:
            raise SystemExit(f"today on the code of {args.today_at} failed:\n{child.stderr[-3000:]}")
        (cell,) = json.loads((Path(out) / "curves.json").read_text()).values()
    return cell["curves"][0]


def plot(rows: List[dict], path: Path) -> None:
    """PSNR (top row, with its CI) and re-identification (bottom row) vs CPU-seconds, a panel per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    cells = sorted({(r["setting"], r["round"]) for r in rows})
    arms = sorted({r["arm"] for r in rows})
    colours = {arm: f"C{i}" for i, arm in enumerate(arms)}  # one colour per arm in every panel
    fig, axes = plt.subplots(2, len(cells), figsize=(4.2 * len(cells), 6.4), squeeze=False, sharex="col")
    for col, (setting, rnd) in enumerate(cells):
        top, bottom = axes[0][col], axes[1][col]
        for arm in arms:
            pts = sorted([r for r in rows if r["setting"] == setting and r["round"] == rnd and r["arm"] == arm
                          and not r["final"]], key=lambda r: r["cpu_s"])
            fin = [r for r in rows if r["setting"] == setting and r["round"] == rnd and r["arm"] == arm and r["final"]]
            pts = pts + fin
            if not pts:
                continue
            xs = [r["cpu_s"] for r in pts]
            top.plot(xs, [r["psnr"] for r in pts], marker=".", label=arm, color=colours[arm])
            top.fill_between(xs, [r["lo"] for r in pts], [r["hi"] for r in pts], alpha=0.15, color=colours[arm])
            bottom.plot(xs, [r.get("reid", float("nan")) for r in pts], marker=".", label=arm, color=colours[arm])
        top.set_title(f"{setting}{' (adaptive)' if setting != 'fp32' else ''}, round {rnd}")
        top.set_ylabel("PSNR (dB), mean and 95% CI")
        bottom.set_ylabel("re-identified (share of victims)")
        bottom.set_ylim(-0.05, 1.05)
        bottom.set_xlabel("CPU-seconds per victim (1 thread)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
