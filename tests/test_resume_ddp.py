"""A federation survives: resume equals an uninterrupted run; 2 processes equal 1."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ggl.jobs.federation import run_federation

REPO = Path(__file__).resolve().parent.parent


def _weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_resume_equals_uninterrupted(make_cfg):
    straight = run_federation(make_cfg("fl.rounds=4", "fl.eval_every=2"))
    first = run_federation(make_cfg("fl.rounds=2", "fl.eval_every=2"))
    resumed = run_federation(make_cfg("fl.rounds=4", "fl.eval_every=2", f"resume={first['run_dir']}"))
    assert resumed["run_dir"] == first["run_dir"]  # same folder, same results.json
    a, b = _weights(straight["run_dir"]), _weights(resumed["run_dir"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert resumed["history"] == straight["history"]
    saved = json.loads((Path(first["run_dir"]) / "results.json").read_text())
    assert [h["round"] for h in saved["history"]] == [2, 4] and saved["final"]["rounds"] == 4


def test_resume_refuses_a_different_experiment(make_cfg):
    from ggl.core.errors import UserError

    first = run_federation(make_cfg("fl.rounds=1"))
    with pytest.raises(UserError, match="fl.lr differ"):
        run_federation(make_cfg("fl.rounds=2", "fl.lr=0.5", f"resume={first['run_dir']}"))
    with pytest.raises(UserError, match="no checkpoint"):
        run_federation(make_cfg("fl.rounds=2", f"resume={first['run_dir']}/nothing.ckpt"))


def _cli_run(tmp_path, *extra):
    # Same per-process thread count in both runs (Lightning gives each of N CPU processes 1/N of the
    # cores): float sums then agree bit for bit, and only the all-reduce's summation order differs.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(REPO / "train.py"), "--config", "fed_q4.yaml", f"output_dir={tmp_path}",
            "logger.mode=disabled", "data.name=digits", "data.num_clients=4", "fl.rounds=2", "fl.eval_every=1",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", *extra]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "fed_q4" / "latest" / "results.json").read_text()), tmp_path / "fed_q4" / "latest"


def test_two_processes_equal_one(tmp_path):
    one, dir1 = _cli_run(tmp_path / "one")
    two, dir2 = _cli_run(tmp_path / "two", "trainer.devices=2", "trainer.strategy=ddp")
    a, b = _weights(dir1), _weights(dir2)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert [h["test_acc"] for h in one["history"]] == [h["test_acc"] for h in two["history"]]
    assert one["final"]["uplink_bits_per_round"] == two["final"]["uplink_bits_per_round"]
    # only rank 0 writes: one run folder, no stray second one
    assert len([p for p in (tmp_path / "two" / "fed_q4").iterdir() if p.name != "latest"]) == 1


class _Crash(Callback):
    """Dies at the start of a round, as a killed job would."""

    def __init__(self, at_round: int):
        self.at_round = at_round

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.at_round:
            raise RuntimeError("simulated crash")


def test_crash_loses_only_the_current_round(make_cfg):
    straight = run_federation(make_cfg("fl.rounds=3"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_federation(make_cfg("fl.rounds=3"), extra_callbacks=[_Crash(at_round=2)])
    crashed_dir = Path(make_cfg().output_dir) / "fed_fp32" / "latest"
    ckpt = torch.load(crashed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1  # rounds 0 and 1 were checkpointed before the crash
    assert [h["round"] for h in json.loads((crashed_dir / "results.json").read_text())["history"]] == [1, 2]
    resumed = run_federation(make_cfg("fl.rounds=3", f"resume={crashed_dir}"))
    a, b = _weights(straight["run_dir"]), _weights(resumed["run_dir"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert resumed["history"] == straight["history"]
