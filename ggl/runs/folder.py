"""A job's run folder: ``<output_dir>/<name>/<timestamp>/`` created fresh (unique, never overwritten,
``latest`` moved only once set-up succeeded), locked, or the stopped run it continues (refusing a
different experiment). Only rank 0 creates, locks and writes.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from omegaconf import OmegaConf

from ggl.core.atomic import fsync_dir
from ggl.core.errors import UserError
from ggl.core.safe_load import safe_load

Experiment = Callable[[dict], dict]   # a config -> the part of it that defines a run's results

def check_writable(folder: Path) -> None:
    """Fail before training, not after an hour, when results cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"\0" * 65536)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write run results to '{folder}' ({exc.strerror or exc}); "
                        f"free some space or set output_dir=<writable folder>") from None


def check_run_name(name: str) -> None:
    """A run name is one folder name: no separators, no '..', not absolute (it must stay in output_dir)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
            or Path(name).is_absolute() or "\0" in name):
        raise UserError(f"config key 'name' = {name!r} must be a plain folder name (no '/', '..' or absolute "
                        f"path): runs are written to output_dir/<name>/; set output_dir to choose the place")


def create_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create ``output_dir/name/<timestamp>`` (unique); ``latest`` is not moved (see ``point_latest``)."""
    check_run_name(name)
    parent = Path(output_dir) / name
    check_writable(parent)
    check_latest(parent)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        run_dir = parent / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise UserError(f"could not create a fresh run folder under '{parent}'")  # pragma: no cover


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create a fresh run folder and point ``latest`` at it at once (jobs with no set-up to fail)."""
    run_dir = create_run_dir(output_dir, name)
    point_latest(run_dir)
    return run_dir


def check_latest(parent: Path) -> None:
    """``latest`` must be ggl's symlink (or absent): never replace a user's file or folder of that name."""
    link = parent / "latest"
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        raise UserError(f"'{link}' is a real file or folder, not the run link ggl maintains; move it away")


def point_latest(run_dir: Path) -> None:
    check_latest(run_dir.parent)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    try:
        os.replace(tmp, link)  # atomic: readers see the old or the new target, never none
    except OSError as exc:
        tmp.unlink()
        raise UserError(f"cannot point '{link}' at the new run ({exc.strerror or exc})") from None
    fsync_dir(run_dir.parent)


class RunLock:
    """An exclusive ``fcntl`` lock on a run folder for as long as a job runs in it.

    Two processes resuming one run would interleave checkpoints and share a W&B id; the second is
    refused. The lock dies with its process (kill -9 included), so a stale one never blocks a resume.
    """

    def __init__(self, run_dir: Path, name: str = ".lock"):
        self.path = Path(run_dir) / name
        self.fd: Optional[int] = None

    def acquire(self, wait: Optional[Callable[[], None]] = None) -> "RunLock":
        """Held by another process: a ``UserError``, or with ``wait``, ``wait()`` (say so) and block until free."""
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a .lock planted as a link elsewhere must not create or open the file it names
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock run folder '{self.path.parent}' ({exc.strerror or exc}); "
                            f"is it writable?") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if wait is not None:
                wait()
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait
                    return self
                except BaseException:
                    self.release()
                    raise
            os.close(self.fd)
            self.fd = None
            raise UserError(f"run folder '{self.path.parent}' is in use by another ggl process (a second "
                            f"resume of the same run?); wait for it to end or stop it") from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def check_latest_link(path: Path) -> None:
    """Every ``latest`` link on ``path`` names a run folder beside it (ggl writes ``latest -> <timestamp>``):
    a hand-made or copied link to elsewhere would resume, or attack, someone else's folder without a word."""
    path = Path(path).expanduser()
    for link in [path] + list(path.parents):
        if link.name != "latest" or not link.is_symlink():
            continue
        try:
            target = link.resolve()
        except (RuntimeError, OSError):  # a loop (latest -> latest)
            raise UserError(f"'{link}' is a symbolic link loop; remove it (ggl points it at the newest run "
                            f"again) or give the run folder itself") from None
        if target.parent != link.parent.resolve():
            raise UserError(f"'{link}' points outside its folder (to '{target}'); ggl's latest link names a run "
                            f"folder beside it: give that run folder itself, or remove the link")


def check_no_symlinked_folders(run_dir: Path) -> None:
    """A resumed run writes into its folder's subfolders (checkpoints/, samples/, audit/, wandb/): one that is
    a symbolic link would be written through, into a folder outside the run."""
    for entry in sorted(Path(run_dir).iterdir()):
        if entry.is_symlink() and entry.is_dir():
            raise UserError(f"run folder '{run_dir}': '{entry.name}/' is a symbolic link (to '{entry.resolve()}'); "
                            f"ggl writes only inside the run folder: replace the link with a real copy of its "
                            f"folder (e.g. cp -rL) and resume again")


def _progress(blob: Dict[str, Any]) -> Tuple[int, int]:
    """How far a checkpoint got: (rounds or epochs done, optimiser steps)."""
    done = blob.get("ggl_rounds_completed", int(blob["epoch"]) + 1)
    return int(done), int(blob.get("global_step") or 0)


def newest_checkpoint(ckpt_dir: Path, given: Optional[Path] = None) -> Tuple[Optional[Path], Dict[str, Any]]:
    """The checkpoint of ``ckpt_dir`` that got furthest, whatever the files are called (``last.ckpt``, Lightning's
    ``last-v1.ckpt`` of a moved folder, a round file): (path, checkpoint), or (None, {}) when there is none.
    ``given`` (a file the user named) must load; other unreadable files are skipped with a line."""
    best: Tuple[Optional[Path], Dict[str, Any]] = (None, {})
    if given is not None:
        best = (given, read_checkpoint(given))
    files = sorted((p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and p != given),
                   key=lambda p: (p.name != "last.ckpt", p.name))  # on a tie: last.ckpt, then by name
    for path in files:
        try:
            blob = read_checkpoint(path)
        except UserError as exc:
            print(f"resume: skipped {exc}", file=sys.stderr)
            continue
        if best[0] is None or _progress(blob) > _progress(best[1]):
            best = (path, blob)
    return best


def recorded_run_dir(checkpoint: Dict[str, Any]) -> Optional[Path]:
    """The run folder a checkpoint was written in (its ModelCheckpoint's ``dirpath`` is ``<run>/checkpoints``)."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("dirpath"), str):
            return Path(state["dirpath"]).parent
    return None


def resolve_resume(resume: str, example: str) -> Tuple[Path, Path, Dict[str, Any]]:
    """``resume`` = a run folder or a checkpoint in one -> (run_dir, ckpt, checkpoint), the checkpoint being the
    folder's newest: a resume continues from the furthest round whatever the files are called, never forks.

    A checkpoint must sit in ``<run>/checkpoints/`` of a ggl run folder (one with ``config.yaml``):
    otherwise the folder two levels up is someone else's, and resuming would write into it.
    """
    path = Path(resume).expanduser()
    check_latest_link(path)
    given = None
    if path.is_dir():
        run_dir = path.resolve()
    else:
        given = path.resolve()
        run_dir = given.parent.parent
        if not given.is_file():
            raise UserError(f"config key 'resume' = {resume!r}: no checkpoint at '{given}' (give a run folder "
                            f"such as {example}, or a .ckpt file)")
    if (given is not None and given.parent.name != "checkpoints") or not (run_dir / "config.yaml").is_file():
        where = f"'{given}' is not in the checkpoints/ folder of" if given else f"'{run_dir}' is not"
        raise UserError(f"config key 'resume' = {resume!r}: {where} a ggl run folder (one with config.yaml); resume "
                        f"only runs ggl made, such as {example}")
    check_no_symlinked_folders(run_dir)
    ckpt, checkpoint = newest_checkpoint(run_dir / "checkpoints", given)
    if ckpt is None:
        raise UserError(f"config key 'resume' = {resume!r}: no checkpoint in '{run_dir / 'checkpoints'}' (the run "
                        f"stopped before its first one; start it again)")
    if given is not None and ckpt != given:
        print(f"resume: '{ckpt.name}' got further than '{given.name}'; continuing from it (a resume never forks a "
              f"run's history; start a new run to branch from an earlier round)", file=sys.stderr)
    recorded = recorded_run_dir(checkpoint)
    if recorded is not None and recorded != run_dir:
        print(f"resume: the run folder moved (written in '{recorded}', now '{run_dir}'); continuing from "
              f"'{ckpt.name}' here", file=sys.stderr)
    return run_dir, ckpt, checkpoint


def check_same_experiment(run_dir: Path, config: dict, section: str, resumable: Iterable[str],
                          experiment: Experiment) -> None:
    """Only ``section.<resumable>`` keys (how far to go) and keys outside the experiment may differ."""
    diffs = experiment_diffs(run_dir, config, section, resumable, experiment)
    if diffs:
        allowed = ", ".join(f"{section}.{k}" for k in sorted(resumable))
        raise UserError(f"resume: {', '.join(diffs)} differ from the run's {run_dir / 'config.yaml'}; a resumed "
                        f"run may only change {allowed}, devices and logging (start a new run instead)")


def experiment_diffs(run_dir: Path, config: dict, section: str, resumable: Iterable[str],
                     experiment: Experiment) -> list:
    """The experiment keys in which ``config`` differs from the run's saved config.yaml (unreadable: error)."""
    saved_file = run_dir / "config.yaml"
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    except Exception as exc:  # a hand-edited or truncated YAML file: name it
        raise UserError(f"resume: cannot read the run's {saved_file} ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(saved, dict):
        raise UserError(f"resume: the run's {saved_file} is not a config mapping")
    mine, theirs = experiment(config), experiment(saved)
    resumable = set(resumable)
    diffs = [k for k in mine if k != section and theirs.get(k) != mine[k]]
    mine_s, theirs_s = mine.get(section) or {}, theirs.get(section) or {}
    diffs += [f"{section}.{k}" for k in sorted(set(mine_s) | set(theirs_s)) if k not in resumable
              and theirs_s.get(k) != mine_s.get(k)]
    return diffs


AUTO = "auto"  # resume=auto: continue <output_dir>/<name>/latest when it is this experiment, else start fresh


def auto_resume(output_dir: str, name: str, config: dict, section: str, resumable: Iterable[str],
                experiment: Experiment, say: Callable[[str], None]) -> Optional[str]:
    """``resume=auto`` (what a requeued cluster job needs): the ``latest`` run folder when it holds a
    checkpoint of the same experiment, else None (start fresh); either way ``say`` one line why."""
    latest = Path(output_dir) / name / "latest"
    if not (latest / "checkpoints" / "last.ckpt").is_file():
        say(f"resume=auto: no run to continue at {latest} (no checkpoints/last.ckpt); starting fresh")
        return None
    run_dir = latest.resolve()
    try:
        diffs = experiment_diffs(run_dir, config, section, resumable, experiment)
    except UserError as exc:
        diffs = [str(exc)]
    if diffs:
        say(f"resume=auto: {latest} is a different experiment ({', '.join(diffs)[:200]} differ); starting fresh")
        return None
    say(f"resume=auto: continuing {run_dir}")
    return str(run_dir)


def read_checkpoint(ckpt: Path) -> Dict[str, Any]:
    """The checkpoint, through the safe loader: a truncated or crafted file is a one-line error here."""
    blob = safe_load(ckpt, "checkpoint")
    if not isinstance(blob, dict) or "state_dict" not in blob or "epoch" not in blob:
        raise UserError(f"checkpoint '{ckpt}' is not a Lightning checkpoint (no state_dict/epoch); give the "
                        f"run folder or its checkpoints/last.ckpt")
    return blob


@dataclass
class RunFolder:
    path: Path
    ckpt: Optional[Path] = None      # the checkpoint to resume from
    fresh: bool = False              # created by this job (removed again if its set-up fails)
    rank_zero: bool = True
    checkpoint: Dict[str, Any] = field(default_factory=dict)  # the resume checkpoint, safely loaded
    lock: Optional[RunLock] = None
    committed: bool = False
    published: bool = False

    def commit(self) -> None:
        """Set-up succeeded: a failure from now on keeps the folder (``latest`` moves at ``publish``)."""
        self.committed = True

    def publish(self) -> None:
        """The run holds something to resume or read (its first checkpoint, or results): a fresh folder
        becomes ``latest``. A run that fails before this never becomes ``latest``."""
        if self.fresh and self.rank_zero and not self.published:
            point_latest(self.path)
        self.published = True

    def abandon(self) -> None:
        """Set-up failed: remove a fresh folder (``latest`` was never moved) and unlock."""
        self.release()
        if self.fresh and self.rank_zero:
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_run(resume: Optional[str], output_dir: str, name: str, config: dict, section: str,
             resumable: Iterable[str], example: str, experiment: Experiment, rank_zero: bool = True) -> RunFolder:
    """The job's run folder; on ranks other than 0 its path is rank 0's only once shared (see ShareRunDir).
    ``experiment`` maps a config (this one, or the resumed run's saved one) to the keys that define its results."""
    check_run_name(name)
    if resume == AUTO:
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank_zero else (lambda msg: None)
        resume = auto_resume(output_dir, name, config, section, resumable, experiment, say)
    if not resume:
        if not rank_zero:  # the real folder arrives by broadcast from rank 0 when the Trainer starts
            return RunFolder(Path(output_dir) / name / "rank0-folder-pending", rank_zero=False)
        run = RunFolder(create_run_dir(output_dir, name), fresh=True)
    else:
        run_dir, ckpt, checkpoint = resolve_resume(resume, example)
        check_same_experiment(run_dir, config, section, resumable, experiment)
        run = RunFolder(run_dir, ckpt, rank_zero=rank_zero, checkpoint=checkpoint)
        if rank_zero:
            check_writable(run_dir)
    if rank_zero:
        try:
            run.lock = RunLock(run.path).acquire()
        except BaseException:
            run.abandon()
            raise
    return run
