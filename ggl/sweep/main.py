"""``ggl sweep`` / ``python -m ggl.sweep``: the command line (argparse), the finish line, the W&B agent's run.

    ggl sweep sweep_defenses.yaml [key=value ...] [--list]     # the grid, locally
    ggl sweep sweep_defenses.yaml --one key=value ...           # one grid point (wandb agent)
    ggl sweep sweep_defenses.yaml --point I                     # grid point I of --list (SLURM array task)
    ggl sweep sweep_defenses.yaml --commands                    # one --point command per point (any scheduler)
    ggl sweep sweep_defenses.yaml --keep DIR                    # also keep finished points light in DIR (and
                                                                # start from them): a sweep across machines
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ggl.core.errors import ConfigError, UserError
from ggl.core.shipped import command
from ggl.audit.reid import HEADLINE
from ggl.report.collect import collect
from ggl.report.points import build_points, chance_level
from ggl.report.tables import most_leakage
from ggl.runs.logger import tag
from ggl.sweep.grid import check_parameter_name, load_sweep, parse_overrides
from ggl.sweep.keep import keep_or_say, restore
from ggl.sweep.plan import GridPoint, job_folder, mark_done, plan
from ggl.sweep.runner import run_points

DESCRIPTION = "The privacy-utility sweep: defence settings -> federations with audit captures -> GGL attacks."


def results_of(points: List[GridPoint]) -> list:
    """The report's points (``ggl.report.points.Point``: same pairing, statistics) of the finished jobs."""
    folders = [d for p in points for d in [p.fed.done_dir] + [a.done_dir for a in p.attacks] if d]
    return build_points(collect(folders).pairs) if folders else []


def output_root(points: List[GridPoint]) -> Optional[Path]:
    """The folder holding the sweep's runs (``<output_dir>`` of ``<output_dir>/<name>/<timestamp>``)."""
    roots = {Path(d).parent.parent for p in points for d in [p.fed.done_dir] + [a.done_dir for a in p.attacks] if d}
    return next(iter(roots)) if len(roots) == 1 else None


def _log_agent_run(point: GridPoint) -> None:
    """Under ``wandb agent``: the sweep's own run (the agent's WANDB_RUN_ID) gets the setting's numbers."""
    import wandb

    run = wandb.init(config={k: v for k, v in point.params.items()}, job_type="sweep-point", name=point.setting,
                     group=point.fed.name if point.fed else None,  # the study's group: its federation's name
                     tags=["sweep", point.setting, tag("defense", point.setting)])
    try:
        found = results_of([point])
        summary = {"setting": point.setting}
        grids = {}
        for r in found:
            grid = r.images.parent / "grid.png" if r.images is not None else None
            if grid is not None and grid.is_file():
                grids[f"reconstructions/{r.key.attacker}"] = wandb.Image(str(grid))
        if grids:
            run.log(grids)
        for r in found:  # one prefix per attacker (and worst case) and round: rounds never overwrite each other
            prefix = r.key.attacker + (f"/round{r.key.round}" if r.key.round is not None else "")
            summary["test_acc"] = r.fed.test_acc
            summary["uplink_bits_per_round"] = r.fed.bits_per_round
            summary[f"{prefix}/n_images"] = r.n_images
            summary[f"{prefix}/reid_chance"] = chance_level(r.pairs)
            for key in ("psnr", "ssim", "lpips", HEADLINE, "best_baseline_psnr", "leakage_psnr"):
                ci = r.ci(key)
                if ci is not None:
                    summary.update({f"{prefix}/{key}_mean": ci.mean, f"{prefix}/{key}_ci_low": ci.low,
                                    f"{prefix}/{key}_ci_high": ci.high})
        run.summary.update({k: v for k, v in summary.items() if v is not None})
    finally:
        run.finish()


def finish_line(summary: dict, points: List[GridPoint]) -> str:
    """One line: what ran, where the output went, the key numbers, the next command."""
    line = (f"sweep: {len(summary['ran'])} jobs run, {len(summary['skipped'])} skipped (done before), "
            f"{len(summary['failed'])} failed, {summary['wall_seconds']:.0f} s"
            + (f"; failed: {', '.join(summary['failed'])}" if summary["failed"] else ""))
    root = output_root(points)
    if root is None:
        return line
    found = results_of(points)
    return f"{line} -> {root} ({len(found)} points){most_leakage(found)}; next: {command('report')} {root}"


# ---------------------------------------------------------------------------------------------
# entry point


def _grid(args: argparse.Namespace) -> Tuple[Dict[str, List[Any]], bool]:
    """The sweep file's grid with the command line's values (each a one-value axis), and whether seed is
    a grid axis of the file."""
    _, grid = load_sweep(args.sweep)
    seeds_vary = len(grid.get("seed", [0])) > 1
    for key, value in parse_overrides(args.overrides).items():
        check_parameter_name(key, "command line")
        grid[key] = [value]
    if args.one:
        multi = [k for k, v in grid.items() if len(v) != 1]
        if multi:
            raise ConfigError(f"--one runs one grid point: give one value for {', '.join(multi)} "
                              f"(e.g. defenses=[])")
    return grid, seeds_vary


def _print_list(points: List[GridPoint], keep: Optional[Path] = None) -> None:
    mark_done(points)
    if keep is not None:
        keep_or_say(points, keep, lambda msg: print(msg, file=sys.stderr))
    for p in points:
        jobs = [p.fed] + p.attacks
        state = ", ".join(f"{j.name}: {'done' if j.done_dir else 'resume' if j.resume_dir else 'to run'}"
                          for j in jobs)
        print(f"{p.setting}: {state}")


def _print_commands(args: argparse.Namespace, n: int) -> None:
    """One command per grid point, each running only that point (``--point I``)."""
    base = command("sweep").split() + [args.sweep] + list(args.overrides)
    for i in range(n):
        print(shlex.join(base + ["--point", str(i), "--no-progress"]))


def pick_point(points: List[GridPoint], index: int) -> List[GridPoint]:
    """``--point I``: the I-th grid point (0-based, the order of --list and --commands)."""
    if not 0 <= index < len(points):
        raise UserError(f"--point {index} is out of range: the sweep has {len(points)} grid points "
                        f"(0..{len(points) - 1}; --list shows them)")
    return [points[index]]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=command("sweep"), description=DESCRIPTION,
                                 epilog=f"e.g. {command('sweep')} sweep_defenses.yaml fed.fl.rounds=5")
    ap.add_argument("sweep", help="a W&B grid sweep file, e.g. configs/sweep_defenses.yaml")
    ap.add_argument("overrides", nargs="*", help="parameter=value; a grid parameter given one value runs only it")
    ap.add_argument("--one", action="store_true", help="run one grid point (what `wandb agent` calls): every "
                    "grid parameter must be given one value")
    ap.add_argument("--list", action="store_true", help="list the settings and what is done; run nothing")
    ap.add_argument("--point", type=int, default=None, metavar="I",
                    help="run grid point I only (0-based, the order of --list), e.g. --point $SLURM_ARRAY_TASK_ID")
    ap.add_argument("--commands", action="store_true",
                    help="print one command per grid point (each with --point I), for any scheduler; run nothing")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="a light copy of each finished grid point (results, images, configs; not the captures "
                    "and checkpoints) goes to DIR, and what DIR holds is put back first, so a sweep stopped on one "
                    "machine goes on on another (commit DIR, clone, rerun); with --list it only brings DIR up to date")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_intermixed_args(argv)  # the agent puts --one between the file and the key=values
    try:
        grid, seeds_vary = _grid(args)
        workers = grid.get("workers", [1])[0]
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"sweep parameter 'workers' = {workers} must be >= 1")
        points = plan(grid, seeds_vary)
        if args.commands:
            _print_commands(args, len(points))
            return 0
        if args.point is not None:
            points = pick_point(points, args.point)
        if args.keep is not None and points:
            put_back = restore(args.keep, job_folder(points[0].fed).parent)
            if put_back:
                print(f"sweep: {put_back} finished runs put back from {args.keep}", file=sys.stderr)
        if args.list:
            _print_list(points, args.keep)
            return 0
        summary = run_points(points, progress=not args.no_progress, workers=workers, keep=args.keep)
        if args.one and os.environ.get("WANDB_SWEEP_ID") and not summary["failed"]:
            _log_agent_run(points[0])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished jobs are skipped)", file=sys.stderr)
        return 130
    print(finish_line(summary, points))
    return 1 if summary["failed"] else 0
