"""Two sweeps on one output folder (issue 23, round two): each job runs once; the second sweep waits for the
job the first holds (its sweep lock), then finds it done."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from ggl.config import CONFIG_DIR, load_config, to_container
from ggl.runs.folder import RunLock
from ggl.sweep.grid import load_sweep
from ggl.sweep.plan import JOB_LOCK, job_folder, plan
from ggl.sweep import runner


def _fake_jobs(monkeypatch, calls, pause=0.3):
    """Jobs that write what a finished run writes (results.json with its config), a little slowly."""
    def finished(cfg, name, extra):
        run = Path(cfg.output_dir) / name / uuid.uuid4().hex
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"config": to_container(cfg), **extra}))
        return run

    def run_fed(job):
        calls.append(job.name)
        time.sleep(pause)
        cfg = load_config(job.config_file, job.overrides)
        return finished(cfg, job.name, {"final": {"rounds": cfg.fl.rounds}})

    def run_attack(job, source):
        calls.append(job.name)
        time.sleep(pause)
        return finished(load_config(job.config_file, job.overrides + [f"attack.source={source}"]), job.name,
                        {"wall_seconds": 1.0})
    monkeypatch.setattr(runner, "run_fed", run_fed)
    monkeypatch.setattr(runner, "run_attack", run_attack)


def _grid(out: Path) -> dict:
    _, grid = load_sweep(CONFIG_DIR / "sweep_tiny.yaml")
    grid["output_dir"] = [str(out)]
    return grid


def test_two_sweeps_on_one_folder_run_each_job_once(tmp_path, monkeypatch):
    calls = []
    _fake_jobs(monkeypatch, calls)
    planned = threading.Barrier(2)
    real_mark_done = runner.mark_done

    def mark_done(points):  # both sweeps have planned (nothing done) before either runs a job
        real_mark_done(points)
        planned.wait(timeout=60)
    monkeypatch.setattr(runner, "mark_done", mark_done)
    grid = _grid(tmp_path / "runs")
    summaries = []
    threads = [threading.Thread(target=lambda: summaries.append(runner.run_points(plan(grid), progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 5, calls
    assert sorted(len(s["ran"]) + len(s["skipped"]) for s in summaries) == [5, 5]
    assert sum(len(s["ran"]) for s in summaries) == 5 and not any(s["failed"] for s in summaries)


def test_a_job_another_sweep_holds_is_waited_for_then_found_done(tmp_path, monkeypatch):
    calls = []
    _fake_jobs(monkeypatch, calls, pause=0)
    points = plan(_grid(tmp_path / "runs"))
    fed = points[0].fed
    lock = RunLock(job_folder(fed), JOB_LOCK).acquire()
    said = []

    def other_sweep():  # holds the federation, runs it, lets go
        time.sleep(0.5)
        runner.run_fed(fed)
        lock.release()
    t = threading.Thread(target=other_sweep)
    t.start()
    out = runner._run_point(points[0], said.append)
    t.join()
    assert calls.count(fed.name) == 1  # the other sweep's run only
    assert (fed, "found", 0.0) in out
    assert any("another sweep is running it; waiting" in s for s in said)
