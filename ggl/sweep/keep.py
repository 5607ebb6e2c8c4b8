"""A light copy of a sweep's finished grid points, for sweeps that outlive the machine they run on
(``python -m ggl.sweep FILE --keep DIR``).

A finished point's runs are mostly its federation's audit captures (~200 MB for the CNN at 3 rounds x 16
images) and checkpoints, which only its attacks read. Once every job of a point is done, its runs' other
files (results.json, configs, images.pt: about 1 MB per attack job) are copied to
``DIR/<job name>/<timestamp>/``; a later sweep with the same ``--keep DIR`` (on a fresh machine, in CI, after
``git clone``) first puts back whatever of DIR is missing under ``output_dir``, so those points are skipped
and the report reads them as if they had run there.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List, Sequence

from ggl.core.atomic import fsync_dir
from ggl.core.errors import UserError
from ggl.sweep.plan import GridPoint

# left out of the copy: the federation's captures and checkpoints (read only by its own attacks, which are
# done), W&B's offline files (`wandb sync` them from the machine that ran them), locks, and the runs' own
# pictures (.png: the report draws its figures from images.pt and results.json)
HEAVY = ("audit", "checkpoints", "wandb")
LEFT_OUT_SUFFIXES = (".lock", ".png")
DONE_FILE = "results.json"  # written last: a run without it is not done, in the copy as on disk
PUT_BACK = "put_back.txt"   # in a run folder that restore() made: it holds the kept files only


def captures_missing(fed_run: Path) -> bool:
    """A finished federation put back from a kept copy has no captures left to attack."""
    return (Path(fed_run) / PUT_BACK).is_file()


def light_files(run: Path) -> List[Path]:
    """The files of a run folder worth keeping, relative to it, ``results.json`` last."""
    run = Path(run)
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(run):
        rel_dir = Path(dirpath).relative_to(run)
        dirnames[:] = sorted(d for d in dirnames if d not in HEAVY and not (Path(dirpath) / d).is_symlink())
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(LEFT_OUT_SUFFIXES) or name == PUT_BACK or path.is_symlink():
                continue
            found.append(rel_dir / name)
    found.sort(key=lambda p: (p == Path(DONE_FILE), str(p)))
    return found


def keep_or_say(points: Iterable[GridPoint], keep_dir: Path, write) -> None:
    """``keep_points``, where a copy that fails (a full disk, a read-only folder) is one line to ``write``:
    the runs themselves are intact, so the sweep goes on."""
    for p in points:  # one point that cannot be copied does not hold back the others
        try:
            keep_points([p], keep_dir)
        except OSError as exc:
            write(f"[sweep] could not keep finished points in {keep_dir} ({p.setting}: {exc}); the runs are "
                  f"intact; `--list --keep {keep_dir}` copies them later")


def _copy_run(src: Path, dst: Path, files: Sequence[Path], note: str = "") -> None:
    """``files`` of run ``src`` into ``dst``, through a temporary folder renamed into place: a copy
    stopped part-way leaves no run folder that a sweep or a report could take for a finished one. Each
    file and the folder are on disk before the rename, and the rename before this returns (a power cut
    then loses either the whole copy or nothing)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
            _fsync_file(tmp / rel)
        if note:
            (tmp / PUT_BACK).write_text(note)
            _fsync_file(tmp / PUT_BACK)
        for folder in sorted({(tmp / rel).parent for rel in files} | {tmp}, reverse=True):
            fsync_dir(folder)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def point_runs(p: GridPoint) -> List[Path]:
    """The run folders of a point whose jobs are all done; [] while any is not."""
    jobs = [p.fed] + p.attacks
    if any(j.done_dir is None for j in jobs):
        return []
    return [Path(j.done_dir) for j in jobs]


def keep_points(points: Iterable[GridPoint], keep_dir: Path) -> int:
    """Copy the light files of every finished point not kept yet into ``keep_dir``; the number of runs copied."""
    copied = 0
    for p in points:
        for run in point_runs(p):
            dst = Path(keep_dir) / run.parent.name / run.name  # <job name>/<timestamp>, as under output_dir
            if (dst / DONE_FILE).is_file():
                continue
            if dst.exists():  # an earlier copy without its results.json: never finished, replace it
                shutil.rmtree(dst)
            _copy_run(run, dst, light_files(run))
            copied += 1
    return copied


def restore(keep_dir: Path, output_dir: Path) -> int:
    """Put back under ``output_dir`` every kept run it does not have (``<name>/<timestamp>/``); the number
    put back. A run already there is left as it is (the sweep's own copy has its captures)."""
    keep_dir = Path(keep_dir)
    if not keep_dir.exists():
        return 0
    if not keep_dir.is_dir():
        raise UserError(f"--keep {keep_dir}: not a folder; give the folder that holds (or will hold) the "
                        f"sweep's kept runs")
    restored = 0
    for done in sorted(keep_dir.glob(f"*/*/{DONE_FILE}")):
        run = done.parent
        if run.name.startswith("."):
            continue
        dst = Path(output_dir) / run.parent.name / run.name
        if dst.exists():
            continue
        _copy_run(run, dst, light_files(run), note=f"put back from {run} by `ggl sweep --keep`: the kept files only "
                  f"(no captures, checkpoints, W&B files or pictures)\n")
        restored += 1
    return restored
