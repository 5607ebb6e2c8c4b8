"""Running the grid points' jobs: in this process one after the other, or (``workers`` > 1) a point per worker
process at a time; a point's own jobs run in order (its attacks need its federation). One progress bar
over all jobs, with the time left measured from the jobs run so far. With several GPUs visible, worker
processes take them round-robin (``CUDA_VISIBLE_DEVICES`` set per worker, ``gpu_for_worker``)."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ggl.config import load_config
from ggl.core.environ import without_env
from ggl.core.errors import UserError
from ggl.jobs import attack as attack_job, federation as federation_job
from ggl.runs.folder import RunLock
from ggl.sweep.keep import captures_missing, keep_or_say
from ggl.sweep.plan import JOB_LOCK, GridPoint, Job, find_attack, find_fed, job_folder, mark_done

# environment the W&B agent sets for its one run; the jobs' own W&B runs must not inherit it
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")


def _job_env():
    """The jobs' own W&B runs must not attach to the agent's sweep run (they have their own ids)."""
    return without_env(AGENT_ENV)


def run_fed(job: Job) -> Path:
    over = list(job.overrides) + ([f"resume={job.resume_dir}"] if job.resume_dir else [])
    cfg = load_config(job.config_file, over)
    res = federation_job.run_federation(cfg)
    # the folder as find_fed names it (a resumed run reports it resolved), so the attacks' configs
    # (attack.source) are the same whether the federation ran now or in an earlier, stopped sweep
    return Path(cfg.output_dir) / job.name / Path(res["run_dir"]).name


def run_attack_job(job: Job, source: Path) -> Path:  # not run_attack: that is ggl.jobs.attack's, called here
    threads = torch.get_num_threads()
    cfg = load_config(job.config_file, job.overrides + [f"attack.source={source}"])
    try:  # the attack sets torch's thread count for the process; the next federation gets it back
        res = attack_job.run_attack(cfg)
    finally:
        torch.set_num_threads(threads)
    return Path(cfg.output_dir) / job.name / Path(res["run_dir"]).name


class Progress:
    """One bar over all jobs; the time left is measured: seconds per FL round and per attack search
    unit (image x generation), per kind of job, from the jobs run so far (not from skipped ones),
    times the work left of that kind."""

    def __init__(self, jobs: List[Job], enabled: bool = True, workers: int = 1):
        from tqdm.auto import tqdm

        self.workers = max(1, int(workers))  # jobs of that many points run side by side
        self.left: Dict[str, float] = {}
        self.spent: Dict[str, List[float]] = {}  # [seconds, units] per kind of job
        for j in jobs:
            self.left.setdefault(self.kind(j), 0.0)
            self.spent.setdefault(self.kind(j), [0.0, 0.0])
            if j.done_dir is None:
                self.left[self.kind(j)] += j.cost
        done = sum(j.done_dir is not None for j in jobs)
        self.bar = tqdm(total=len(jobs), initial=done, unit="job", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs [{elapsed}{postfix}]")
        self._post("")

    @staticmethod
    def kind(job: Job) -> str:
        """Rates are kept apart where they differ: an adaptive search step costs 1.5-4x a non-adaptive one."""
        return job.kind if job.kind == "fed" else f"attack-{job.attacker}"

    def eta(self) -> Optional[float]:
        total = 0.0
        for kind, units in self.left.items():
            if units <= 0:
                continue
            seconds, done = self.spent[kind]
            if done <= 0:
                return None
            total += units * seconds / done
        return total / self.workers

    def _post(self, current: str) -> None:
        eta = self.eta()
        left = "time left: ? (after the first job of each kind)" if eta is None else f"time left ~{_hms(eta)}"
        self.bar.set_postfix_str(f"{current} | {left}" if current else left)

    def start(self, job: Job) -> None:
        self._post(f"{job.kind} {job.name}")

    def finish(self, job: Job, seconds: float) -> None:
        kind = self.kind(job)
        self.spent[kind][0] += seconds
        self.spent[kind][1] += job.cost
        self.left[kind] = max(0.0, self.left[kind] - job.cost)
        self.bar.update(1)
        self._post("")

    def skip(self, job: Job) -> None:
        """A job that will not run (found done, or its federation failed): no work left, no rate."""
        self.left[self.kind(job)] = max(0.0, self.left[self.kind(job)] - job.cost)
        self.bar.update(1)
        self._post("")

    def write(self, msg: str) -> None:
        self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _run_point(p: GridPoint, write, start=None, done=None) -> List[Tuple[Job, str, float]]:
    """Run the jobs of one grid point not done yet, in order: [(job, status, seconds)], status "ran",
    "failed", "skipped" (done before the sweep) or "found" (found done once its federation resumed, or once
    another sweep on the same folder ran it), each also handed to ``done`` as it is known. A failing job is
    reported with ``write`` and its setting's later jobs fail."""
    out: List[Tuple[Job, str, float]] = []

    def emit(job: Job, status: str, seconds: float = 0.0) -> None:
        out.append((job, status, seconds))
        if done is not None:
            done(job, status, seconds)

    for job in [p.fed] + p.attacks:
        found = False
        if job.kind == "attack" and job.done_dir is None and p.fed.done_dir is not None:
            job.done_dir = find_attack(job, p.fed.done_dir)  # its federation was resumed just now
            found = job.done_dir is not None
        if job.done_dir is not None:
            emit(job, "found" if found else "skipped")
            continue
        if job.kind == "attack" and p.fed.done_dir is None:  # its federation failed
            emit(job, "failed")
            continue
        if job.kind == "attack" and captures_missing(p.fed.done_dir):
            write(f"[sweep] attack {job.name} failed: its federation {p.fed.done_dir} was put back from a kept "
                  f"copy (--keep) without the captures an attack reads; delete that folder and rerun to run "
                  f"the federation, and this setting's attacks, again")
            emit(job, "failed")
            continue
        status, seconds = _locked_job(p, job, write, start)
        emit(job, status, seconds)
    return out


def _locked_job(p: GridPoint, job: Job, write, start) -> Tuple[str, float]:
    """The job under its sweep lock (``<output_dir>/<name>/.sweep.lock``): a second sweep on the same folder
    waits while the first runs it, then finds it done instead of running it again."""
    try:
        lock = RunLock(job_folder(job), JOB_LOCK).acquire(
            wait=lambda: write(f"[sweep] {job.kind} {job.name}: another sweep is running it; waiting"))
    except UserError as exc:
        write(f"[sweep] {job.kind} {job.name} failed: {exc}")
        return "failed", 0.0
    try:
        if job.kind == "fed":  # what is on disk now, not when the sweep was planned
            job.done_dir, job.resume_dir = find_fed(job)
        else:
            job.done_dir = find_attack(job, p.fed.done_dir)
        if job.done_dir is not None:
            return "found", 0.0
        if start:
            start(job)
        return _run_job(p, job, write)
    finally:
        lock.release()


def _run_job(p: GridPoint, job: Job, write) -> Tuple[str, float]:
    t0 = time.perf_counter()
    try:
        with _job_env():
            if job.kind == "fed":
                what = f"resuming {job.resume_dir}" if job.resume_dir else "starting"
                write(f"[sweep] federation {job.name}: {what}")
                job.done_dir = run_fed(job)
            else:
                write(f"[sweep] attack {job.name} on {p.fed.done_dir}")
                job.done_dir = run_attack_job(job, p.fed.done_dir)
    except UserError as exc:
        write(f"[sweep] {job.kind} {job.name} failed: {exc}")
        return "failed", 0.0
    except Exception as exc:  # one broken setting must not lose the others
        write(f"[sweep] {job.kind} {job.name} failed: {type(exc).__name__}: {exc}")
        return "failed", 0.0
    return "ran", time.perf_counter() - t0


def visible_gpus() -> List[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` as set (ids or UUIDs), else all torch counts."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return ids[:next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))]  # CUDA stops at -1
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_for_worker(index: int, gpus: Sequence[str]) -> Optional[str]:
    """The GPU of worker ``index`` (0, 1, ...): round-robin over ``gpus``; None (leave the environment as
    it is) when fewer than two are visible."""
    if len(gpus) < 2:
        return None
    return gpus[index % len(gpus)]


ORPHAN_POLL_SECONDS = 2.0


def _exit_when_orphaned(parent: int) -> None:
    """A worker whose sweep died (killed, say, so its pool never shut down) stops too, within seconds,
    instead of running on and writing into the sweep's folder behind the user's back (seen here)."""
    while True:
        time.sleep(ORPHAN_POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def _worker_init(threads: int, counter=None, gpus: Sequence[str] = ()) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    if counter is not None:
        with counter.get_lock():  # the workers' start order numbers them
            index = counter.value
            counter.value += 1
        gpu = gpu_for_worker(index, gpus)
        if gpu is not None:  # before this process touches CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _worker_point(p: GridPoint) -> Tuple[GridPoint, List[Tuple[str, str, float]]]:
    """A grid point in a worker process; jobs come back by name (the parent holds its own Job objects)."""
    done = _run_point(p, lambda msg: print(msg, file=sys.stderr, flush=True))
    return p, [(job.name, status, seconds) for job, status, seconds in done]


Record = Callable[[Job, str, float], None]


def _run_pool(points: List[GridPoint], workers: int, threads: int, record: Record, write,
              finished: Callable[[GridPoint], None] = lambda p: None) -> None:
    """The points in ``workers`` spawned processes of ``threads`` threads each; each job's status is
    ``record``ed as its point comes back (a worker that died fails its point's jobs not done yet), then
    the point is handed to ``finished``."""
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    gpus = visible_gpus()
    if len(gpus) > 1:
        write(f"[sweep] {workers} workers share {len(gpus)} GPUs round-robin (CUDA_VISIBLE_DEVICES per worker)")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, ctx.Value("i", 0), gpus)) as pool:
        futures = {pool.submit(_worker_point, p): p for p in points}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                done_point, done = fut.result()
            except Exception as exc:  # the worker itself died
                write(f"[sweep] setting {p.setting} failed: {type(exc).__name__}: {exc}")
                for job in [p.fed] + p.attacks:
                    if job.done_dir is None:
                        record(job, "failed", 0.0)
                continue
            by_name = {j.name: j for j in [done_point.fed] + done_point.attacks}
            for job in [p.fed] + p.attacks:
                name_status = next((d for d in done if d[0] == job.name), None)
                if name_status is None:
                    continue
                job.done_dir = by_name[job.name].done_dir
                record(job, name_status[1], name_status[2])
            finished(p)


def run_points(points: List[GridPoint], progress: bool = True, workers: int = 1,
               keep: Optional[Path] = None) -> dict:
    """Run every job not done yet; a failing job is reported and its setting's later jobs skipped.
    ``keep``: a folder that gets a light copy of each point as it finishes (``ggl.sweep.keep``).

    ``workers`` > 1: grid points (independent of each other) run in that many worker processes of
    ``torch_threads`` threads each (1 if unset), e.g. two one-thread processes on 2 cores instead of
    one two-thread process; a point's own jobs still run in order (its attacks need its federation)."""
    mark_done(points)
    if keep is not None:
        keep_or_say(points, keep, lambda msg: print(msg, file=sys.stderr))
    threads = points[0].params.get("torch_threads") if points else None
    if threads:
        torch.set_num_threads(int(threads))
    jobs = [j for p in points for j in [p.fed] + p.attacks]
    bar = Progress(jobs, enabled=progress, workers=workers if len(points) > 1 else 1)
    summary = {"ran": [], "skipped": [], "failed": [], "wall_seconds": 0.0}
    clock = time.perf_counter()

    def record(job: Job, status: str, seconds: float) -> None:
        summary["skipped" if status == "found" else status].append(job.name)
        if status == "ran":
            bar.finish(job, seconds)
        elif status in ("failed", "found"):
            bar.skip(job)

    try:
        def finished(p: GridPoint) -> None:
            if keep is not None:
                keep_or_say([p], keep, bar.write)

        if workers > 1 and len(points) > 1:
            _run_pool(points, workers, int(threads or 1), record, bar.write, finished)
        else:
            for p in points:
                _run_point(p, bar.write, bar.start, record)
                finished(p)
    finally:
        bar.close()
        summary["wall_seconds"] = time.perf_counter() - clock
    return summary
