"""The cluster path: ``ggl sweep FILE --point I`` / ``--commands``, ``resume=auto`` for requeued jobs, and
sweep workers taking GPUs round-robin."""
from __future__ import annotations

import json
import multiprocessing
import os
import shlex
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from ggl.cli import main as ggl_main
from ggl.core import shipped
from ggl.sweep.runner import _worker_init, gpu_for_worker, visible_gpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
from _attack_fixtures import one_torch_thread  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _prog_back():
    yield
    shipped.PROG = None  # ggl.cli.main sets it for the rest of the process


class _StopAfterRound1(Callback):
    """A job killed by the scheduler after round 1 (Ctrl-C / SIGTERM reach Lightning the same way)."""

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_resume_auto_continues_the_same_experiment_and_refuses_another(make_cfg, capsys):
    from ggl.jobs.federation import run_federation

    with pytest.raises(KeyboardInterrupt) as ki:
        run_federation(make_cfg("fl.rounds=2", "resume=auto"), extra_callbacks=[_StopAfterRound1()])
    first = Path(ki.value.run_dir)
    err = capsys.readouterr().err
    assert "resume=auto: no run to continue" in err and "starting fresh" in err
    assert json.loads((first / "results.json").read_text())["final"]["rounds"] == 1

    res = run_federation(make_cfg("fl.rounds=2", "resume=auto"))  # the requeued job
    assert f"resume=auto: continuing {first.resolve()}" in capsys.readouterr().err
    assert Path(res["run_dir"]).resolve() == first.resolve()
    assert [h["round"] for h in res["history"]] == [1, 2] and res["final"]["rounds"] == 2

    other = run_federation(make_cfg("fl.rounds=1", "fl.lr=0.5", "resume=auto"))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("resume=auto")]
    assert len(lines) == 1 and "different experiment" in lines[0] and "fl.lr" in lines[0] \
        and "starting fresh" in lines[0]
    assert Path(other["run_dir"]).resolve() != first.resolve()


def test_sweep_point_out_of_range_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ggl_main(["sweep", "sweep_tiny.yaml", "--point", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--point 2 is out of range" in err[0] and "2 grid points" in err[0]


def test_sweep_commands_one_per_point_and_point_selects_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ggl_main(["sweep", "sweep_tiny.yaml", "seed=1", "--commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        words = shlex.split(line)
        assert words[:3] == ["ggl", "sweep", "sweep_tiny.yaml"] and "seed=1" in words
        assert words[words.index("--point") + 1] == str(i)
    assert ggl_main(["sweep", "sweep_tiny.yaml", "--point", "1", "--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and listed[0].startswith("q4")


def test_gpus_round_robin_over_workers():
    assert [gpu_for_worker(i, ["0", "1", "2"]) for i in range(5)] == ["0", "1", "2", "0", "1"]
    assert gpu_for_worker(3, ["5", "7"]) == "7"  # the visible ids, not 0..n-1
    assert gpu_for_worker(0, ["0"]) is None and gpu_for_worker(2, []) is None  # nothing to share


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1,GPU-ab12")
    assert visible_gpus() == ["3", "1", "GPU-ab12"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,4")
    assert visible_gpus() == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_worker_init_sets_its_gpu(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "x")
    seen = []
    try:
        for _ in range(3):
            _worker_init(1, counter, ["4", "6"])
            seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    finally:
        torch.set_num_threads(threads)
    assert seen == ["4", "6", "4"] and counter.value == 3


def test_ggl_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        ggl_main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"    {c} " in out for c in ("train", "attack", "sweep", "report"))
    with pytest.raises(SystemExit) as e:
        ggl_main(["nope"])
    assert e.value.code == 2


def test_sweep_point_runs_that_point_only(tmp_path, capsys):
    out = tmp_path / "runs"
    assert ggl_main(["sweep", "sweep_tiny.yaml", f"output_dir={out}", "--point", "0", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attack-fp32", "fed-fp32"]  # q4 (point 1) untouched
    assert "next: ggl report" in capsys.readouterr().out
