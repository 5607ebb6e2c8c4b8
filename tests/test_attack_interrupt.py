"""Ctrl-C during an attack: the hint names this run (not the previous one `latest` still points at), a run
that finished no setting leaves no folder behind, and one that finished some keeps them in its results."""
from __future__ import annotations

from pathlib import Path

import pytest

import ggl.jobs.attack as attack_job
from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.cli import attack_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(tmp_path):
    return [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits", "audit.num_images=1",
            "attack.optimizer=cmaes", "attack.generations=1", "attack.population=4", "attack.progress=false"]


def _interrupt_at(monkeypatch, call: int):
    real, calls = attack_job.attack_setting, []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(attack_job, "attack_setting", fake)


def test_ctrl_c_names_this_run_and_keeps_only_finished_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(attack_job, "load_attack_prior", lambda *a, **k: TinyPrior())
    assert attack_main(_args(tmp_path)) == 0  # an earlier, complete run: `latest` points at it
    runs = tmp_path / "runs" / "attack"
    earlier = (runs / "latest").resolve()
    capsys.readouterr()

    _interrupt_at(monkeypatch, 1)  # before any setting finished
    assert attack_main(_args(tmp_path)) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "nothing kept" in line and f"{earlier}/" not in line
    assert sorted(p.name for p in runs.iterdir() if p.name != "latest") == [earlier.name]  # no half-run left

    _interrupt_at(monkeypatch, 2)  # the first setting (no defence) finished, the second (q4) did not
    assert attack_main(_args(tmp_path)) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    (this,) = [p for p in runs.iterdir() if p.name not in ("latest", earlier.name)]
    assert f"{this}/results.json" in line and f"{earlier}/" not in line
    assert Path(runs / "latest").resolve() == this  # its results are the newest
