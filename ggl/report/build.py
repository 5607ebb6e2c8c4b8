"""The report job: runs (or a per-image CSV) -> points -> ``per_image.csv``, ``accuracy.csv``,
``privacy_utility.md`` and the figures of ``ggl.report.figures``; the finish line; ``main``
(``python -m ggl.report``). What each file holds: docs/findings.md, "The privacy-utility report".
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ggl.audit.records import SchemaError

from ggl.audit.tidy import ACCURACY_FILE, read_csv, write_accuracy_csv, write_csv
from ggl.core.atomic import atomic_write_text, fsync_dir
from ggl.core.errors import UserError, WriteError
from ggl.core.plugins import load_plugins
from ggl.core.shipped import command
from ggl.report.collect import Collected, collect, is_json_object, results_files
from ggl.report.figures import FIGURES, PLOT_METRICS, draw_figures
from ggl.report.points import Point, build_points, measured_pairs
from ggl.report.tables import CSV_FILE, markdown, most_leakage
from ggl.report.wandb_log import log_report

MARKDOWN_FILE = "privacy_utility.md"
FILES = (MARKDOWN_FILE, *(f.file for f in FIGURES), CSV_FILE, ACCURACY_FILE)
DESCRIPTION = ("The privacy-utility report: federation runs (utility) paired with the attacks on their "
               "captures (privacy).")


@dataclass(frozen=True)
class Report:
    """What ``write_report`` and ``report_from_csv`` return: what was read and its points."""
    collected: Collected
    points: List[Point]


def _write_outputs(report: Report, out: Path, command: str, clock: float, metric: str, csv: bool = True) -> None:
    """All of the report lands in ``out``, or none of it: every file is written (atomically) into a temp folder
    beside ``out``, then moved into place; a full disk or a read-only folder is one line naming the folder."""
    stage = _stage(out)
    try:
        if csv:  # in table order: the CSV follows the table; image paths relative to where the CSV will be
            write_csv(stage / CSV_FILE, measured_pairs(report.points), relative_to=out)
            write_accuracy_csv(stage / ACCURACY_FILE, report.collected.feds)
        draw_figures(report.points, report.collected.feds, stage, metric)
        atomic_write_text(stage / MARKDOWN_FILE,
                          markdown(report.collected, report.points, command, time.perf_counter() - clock))
        _move_into(stage, out, FILES if csv else tuple(f for f in FILES if f not in (CSV_FILE, ACCURACY_FILE)))
    except (OSError, WriteError) as exc:
        raise UserError(f"cannot write the report into '{out}' ({_reason(exc)}); nothing of it was written: free "
                        f"some space or give a writable --out") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return getattr(exc, "reason", None) or str(exc)


def _stage(out: Path) -> Path:
    """A fresh temp folder beside ``out`` (same file system: the moves are renames), ``out`` checked writable."""
    real = out.resolve()
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        if real.exists() and not os.access(real, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "read-only folder")
        stage = real.parent / f".{real.name}.report-tmp-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as exc:
        raise UserError(f"cannot write the report into '{out}' ({exc.strerror or exc}); nothing of it was "
                        f"written: give a writable --out") from None
    return stage


def _move_into(stage: Path, out: Path, files: Sequence[str]) -> None:
    """The staged files into ``out`` (renames; a report file the new report lacks, e.g. a figure with nothing to
    draw, is removed so no file of an older report stays behind)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
        elif (out / name).exists():
            (out / name).unlink()
    fsync_dir(out)


def write_report(roots: Sequence[Path], out: Path, wandb_mode: str = "disabled", project: Optional[str] = None,
                 metric: str = "psnr") -> Report:
    clock = time.perf_counter()
    roots = [Path(r) for r in roots]
    for r in roots:
        if not r.exists():
            raise UserError(f"'{r}' does not exist; give the folder of the runs, e.g. runs/sweep_defenses")
    collected = collect(roots)
    for p, why in collected.skipped:
        print(f"skipped {p}: {why}", file=sys.stderr)
    report = Report(collected, build_points(collected.pairs))
    out = Path(out)
    _write_outputs(report, out, f"{command('report')} {' '.join(str(r) for r in roots)}", clock, metric)
    if wandb_mode != "disabled":
        log_wandb(report.points, out, wandb_mode, project)
    return report


def report_from_csv(csv_path: Path, out: Path, metric: str = "psnr") -> Report:
    """The table and the figures from a per-image CSV alone (the reconstructions figure also needs the
    images files its ``images`` column names, where they still exist)."""
    clock = time.perf_counter()
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        what = "is a folder" if csv_path.is_dir() else "does not exist"
        raise UserError(f"'{csv_path}' {what}; give a per-image CSV written by the report "
                        f"(e.g. reports/{CSV_FILE})")
    try:
        pairs = read_csv(csv_path)
    except SchemaError as exc:
        raise UserError(str(exc)) from None
    if not pairs:
        raise UserError(f"'{csv_path}' holds no rows (empty, or a header alone); give a per-image CSV written by "
                        f"the report (e.g. reports/{CSV_FILE})")
    points = build_points(pairs)
    feds = list({f.key: f for _, f in pairs if f is not None}.values())
    collected = Collected(pairs=pairs, feds=feds, n_files=1, n_attacks=len(points), n_feds=len(feds))
    report = Report(collected, points)
    out = Path(out)
    same = out.resolve() == csv_path.parent.resolve() and (out / CSV_FILE).resolve() == csv_path.resolve()
    _write_outputs(report, out, f"{command('report')} --from-csv {csv_path}", clock, metric, csv=not same)
    return report


def log_wandb(points: List[Point], out: Path, mode: str, project: Optional[str]) -> None:
    """The report's W&B run (``ggl.report.wandb_log``); ``project`` None: WANDB_PROJECT, else "ggl"."""
    log_report(points, out, mode, project, files=FILES)


def finish_line(report: Report, out: Path, metric: str) -> str:
    """One line: where the output went, the key numbers, the next command."""
    points = report.points
    n = sorted({p.n_images for p in points})
    other = "reid" if metric != "reid" else "psnr"
    return (f"report: {len(points)} points (n = {', '.join(map(str, n)) or '–'} images each, "
            f"{len(report.collected.skipped)} files skipped) -> {out}/{{{','.join(FILES)}}}{most_leakage(points)}; "
            f"next: {command('report')} --from-csv {out / CSV_FILE} --metric {other}")


def _check_inputs(roots: Sequence[str]) -> None:
    for r in roots:
        if not Path(r).exists():
            raise UserError(f"'{r}' does not exist; give the folder of the runs, e.g. runs/sweep_defenses")
    files = results_files([Path(r) for r in roots])
    if not files:
        raise UserError(f"no results.json under {', '.join(map(str, roots))}; give the folder the sweep "
                        f"wrote, e.g. runs/sweep_defenses")
    if not any(is_json_object(f) for f in files):
        raise UserError(f"none of the {len(files)} results.json under {', '.join(map(str, roots))} is "
                        f"readable JSON; give the folder the sweep wrote")


def output_folder(roots: Sequence[str], from_csv: Optional[str], out: Optional[str], overwrite: bool) -> Path:
    """Where the report goes: ``--out``, or a ``report/`` folder beside the runs (or the CSV) it reads.

    Never replaces an existing report (e.g. the shipped ``reports/``) without ``--overwrite``; an empty
    or unreadable input is an error before anything is written.
    """
    if from_csv is None:
        _check_inputs(roots)
    if out is None:
        if from_csv is not None:
            out = str(Path(from_csv).parent / "report")
        elif len(roots) == 1 and Path(roots[0]).is_dir():
            out = str(Path(roots[0]) / "report")
        else:
            raise UserError("several inputs (or a file): name the report folder with --out <folder>")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out '{folder}' is a file; give a folder (it is created if missing)")
    existing = [f for f in FILES if (folder / f).exists()]
    if existing and not overwrite:
        raise UserError(f"--out '{folder}' already holds a report ({', '.join(existing)}); give another folder "
                        f"or add --overwrite to replace it")
    return folder


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=command("report"), description=DESCRIPTION)
    ap.add_argument("roots", nargs="*", help="folders of runs (searched recursively) or results.json files")
    ap.add_argument("--from-csv", default=None, metavar="CSV",
                    help=f"rebuild the table and figures from a per-image CSV ({CSV_FILE}) instead of runs")
    ap.add_argument("--out", default=None,
                    help="output folder (default: report/ beside the runs folder, or beside the CSV)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the report files already in --out (never done without this flag)")
    ap.add_argument("--metric", default="psnr", choices=sorted(PLOT_METRICS),
                    help="privacy axis of privacy_utility.png (default: psnr)")
    ap.add_argument("--wandb", default="disabled", choices=("disabled", "offline", "online"),
                    help="also log the table and figures to a W&B report run (default: disabled)")
    ap.add_argument("--project", default=None, help="W&B project of the report run (default: WANDB_PROJECT, else ggl)")
    return ap


def _run(args) -> str:
    load_plugins()  # installed entry points: a plugin defence's runs are labelled by its own class
    if args.from_csv is not None:
        if args.roots:
            raise UserError("give either run folders or --from-csv, not both")
        out = output_folder([], args.from_csv, args.out, args.overwrite)
        report = report_from_csv(Path(args.from_csv), out, args.metric)
    else:
        if not args.roots:
            raise UserError("give the folder of the runs (e.g. runs/sweep_defenses) or --from-csv <csv>")
        out = output_folder(args.roots, None, args.out, args.overwrite)
        report = write_report(args.roots, out, args.wandb, args.project, args.metric)
    return finish_line(report, out, args.metric)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        line = _run(args)
    except UserError as exc:  # the one place a report error becomes exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(line)
    return 0
