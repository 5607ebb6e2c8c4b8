"""Hardening of the core (issue 11, part A): nothing lost, nothing executed, N processes equal 1 on any CPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ggl.core.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parent.parent


def _strict(path: Path) -> dict:
    """Parse as strict JSON: a bare NaN/Infinity token fails."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _folders(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name != "latest") if parent.is_dir() else []


# ------------------------------------------------------------------------------ aggregation

def test_aggregate_does_not_depend_on_how_clients_are_split_over_processes():
    from ggl.fl.module import weighted_mean_in_client_order

    g = torch.Generator().manual_seed(0)
    n = 12
    # magnitudes over many binades: float32 sums of these in different orders differ
    deltas = torch.randn(n, 4096, generator=g) * torch.logspace(-6, 3, n).unsqueeze(1)
    meta = torch.tensor([[cid, 10 + 3 * cid] for cid in range(n)], dtype=torch.float64)
    ref = weighted_mean_in_client_order(deltas, meta)
    # 1 process: slots in client order; 2 or 3 processes: the gather interleaves the ranks' slots
    for world in (2, 3, 5):
        order = [i for r in range(world) for i in range(r, n, world)]
        assert torch.equal(weighted_mean_in_client_order(deltas[order], meta[order]), ref)
    # the test input is sensitive: a plain float32 sum in those two orders is not bitwise equal
    w = meta[:, 1].float().unsqueeze(1)
    order = [i for r in range(2) for i in range(r, n, 2)]
    naive_a = sum((w[i] * deltas[i] for i in range(n)), torch.zeros(4096))
    naive_b = sum((w[i] * deltas[i] for i in order), torch.zeros(4096))
    assert not torch.equal(naive_a, naive_b)
    # padding slots (weight 0) are ignored
    padded_d, padded_m = torch.cat([deltas, torch.full((1, 4096), 1e30)]), torch.cat([meta, torch.tensor([[99., 0.]])])
    assert torch.equal(weighted_mean_in_client_order(padded_d, padded_m), ref)


def test_absurd_and_non_finite_updates_are_screened():
    from ggl.fl.module import FedAvgModule
    from ggl.fl.update import ClientUpdate

    m = FedAvgModule("lenet", 1, 10, {"rounds": 1, "server_lr": 1.0}, seed=0)
    shapes = [p.shape for p in m.model.parameters()]

    def upd(value):
        return ClientUpdate(0, 0, [torch.full(s, value) for s in shapes], [""] * len(shapes), 10, "delta", 1)
    assert m.screen(upd(0.01)) is None
    assert "absurd" in m.screen(upd(1e30)) and "absurd" in m.screen(upd(3e38))
    assert "non-finite" in m.screen(upd(float("nan")))


class _Poison(Callback):
    """A defence-shaped callback: client 0 sends ``value`` everywhere (or the callback raises)."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    def on_client_update(self, trainer, module, update):
        if self.error:
            raise self.error
        if update.client_id == 0:
            return update.with_tensors([torch.full_like(t, self.value) for t in update.tensors])
        return update


def test_huge_finite_update_is_rejected_and_results_are_strict_json(make_cfg):
    from ggl.jobs.federation import run_federation

    res = run_federation(make_cfg("fl.rounds=1", "fl.clients_per_round=4"), extra_callbacks=[_Poison(3e38)])
    saved = _strict(Path(res["run_dir"]) / "results.json")
    assert saved["final"]["rejected_updates"] == 1
    assert saved["final"]["test_acc"] is not None and saved["final"]["test_acc"] > 0.2  # the model learnt
    weights = torch.load(Path(res["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_failing_defence_stops_the_run_with_its_message(make_cfg):
    from ggl.jobs.federation import run_federation

    with pytest.raises(RuntimeError, match="defence chain failed.*ValueError: broken defence"):
        run_federation(make_cfg("fl.rounds=1"), extra_callbacks=[_Poison(error=ValueError("broken defence"))])


def test_write_json_is_strict_and_says_where_a_number_was_not_finite(tmp_path):
    from ggl.runs.logger import write_json

    write_json(tmp_path / "r.json", {"final": {"test_loss": float("nan"), "acc": 0.5},
                                     "history": [{"loss": torch.tensor(float("inf"))}], "v": torch.tensor([1.0, float("nan")])})
    got = _strict(tmp_path / "r.json")
    assert got["final"] == {"test_loss": None, "acc": 0.5} and got["history"][0]["loss"] is None
    assert got["v"] == [1.0, None]
    assert got["non_finite_values"] == {"final.test_loss": "nan", "history[0].loss": "inf"}
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------------------ atomic writes

def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    from ggl.core.atomic import atomic_open, atomic_write_text

    target = atomic_write_text(tmp_path / "f.txt", "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


# ------------------------------------------------------------------------------ safe loading

class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "epoch": 0, "payload": _Evil(marker)}, path)
    return path


def test_a_crafted_pickle_is_refused_and_never_runs_whatever_the_environment(tmp_path, monkeypatch):
    from ggl.runs.checkpointing import AtomicCheckpointIO
    from ggl.gan.prior import load_prior
    from ggl.core.safe_load import safe_load

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    bad = _crafted(tmp_path / "bad.ckpt", marker)
    with pytest.raises(UserError, match="refused"):
        safe_load(bad, "checkpoint")
    with pytest.raises(UserError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(bad, weights_only=False)  # what Lightning's resume calls
    with pytest.raises(UserError, match="refused"):
        load_prior(bad)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # left as the user set it


def test_truncated_and_text_files_are_one_line_errors(tmp_path):
    from ggl.gan.prior import load_prior
    from ggl.core.safe_load import safe_load

    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(1000)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "prior.txt"
    text.write_text("this is not a prior\n")
    for path in (cut, text):
        with pytest.raises(UserError, match="not a torch file") as err:
            safe_load(path, "checkpoint")
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=f"GAN prior '{text}' is not a torch file"):
        load_prior(text)


def test_a_prior_naming_a_foreign_class_is_refused_before_import(tmp_path, monkeypatch):
    from ggl.gan.prior import FORMAT, VERSION, load_prior

    marker = tmp_path / "imported"
    (tmp_path / "evil_prior_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                "import torch\nclass Gen(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prior = tmp_path / "p.pt"
    torch.save({"format": FORMAT, "version": VERSION,
                "spec": {"latent_dim": 8, "channels": 1, "image_size": 32, "num_classes": 10},
                "generator": {"class": "evil_prior_mod.Gen", "kwargs": {}}, "state_dict": {}, "meta": {}}, prior)
    with pytest.raises(UserError, match="not one of ggl's.*not imported"):
        load_prior(prior)
    assert not marker.exists() and "evil_prior_mod" not in sys.modules
    # named by the user explicitly: imported (and then judged as a generator)
    with pytest.raises(UserError, match="could not be built|fails"):
        load_prior(prior, trusted_generators=["evil_prior_mod.Gen"])
    assert marker.exists()
    sys.modules.pop("evil_prior_mod", None)


# ------------------------------------------------------------------------------ run folders

@pytest.mark.parametrize("name", ["../../x", "/tmp/abs_ggl_name", "a/b", ".."])
def test_a_name_that_leaves_output_dir_is_refused(make_cfg, tmp_path, name):
    from ggl.jobs.federation import run_federation

    with pytest.raises(UserError, match="config key 'name'"):
        run_federation(make_cfg(f"name={name}"))
    assert not (tmp_path / "x").exists() and not Path("/tmp/abs_ggl_name").exists()


def test_a_set_up_error_leaves_no_folder_and_does_not_move_latest(make_cfg, tmp_path, monkeypatch):
    import ggl.jobs.federation as fl_run

    parent = tmp_path / "runs" / "fed_fp32"
    (parent / "20000101-000000").mkdir(parents=True)
    (parent / "latest").symlink_to("20000101-000000")

    def broken(*a, **k):
        raise UserError("simulated set-up error")
    monkeypatch.setattr(fl_run, "write_partition", broken)
    with pytest.raises(UserError, match="simulated"):
        fl_run.run_federation(make_cfg())
    assert _folders(parent) == ["20000101-000000"] and os.readlink(parent / "latest") == "20000101-000000"


class _CtrlC(Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_resume_guards_and_ctrl_c(make_cfg, tmp_path, capsys):
    """One small federation, then everything a resume must refuse or leave alone."""
    from ggl.jobs.federation import run_federation
    from ggl.runs.folder import RunLock

    # Ctrl-C in round 1: the KeyboardInterrupt reaches the caller with the run folder, files intact
    with pytest.raises(KeyboardInterrupt) as ki:
        run_federation(make_cfg("fl.rounds=2"), extra_callbacks=[_CtrlC()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    run_dir = Path(ki.value.run_dir)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert _strict(run_dir / "results.json")["final"]["rounds"] == 1
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]

    snapshot = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    # a finished run (1 of 1 rounds) resumed: says so, changes nothing; an unrelated GAN key may differ
    res = run_federation(make_cfg("fl.rounds=1", "gan.epochs=3", f"resume={run_dir}"))
    assert "already finished its 1 rounds" in capsys.readouterr().err
    assert res["final"]["rounds"] == 1 and res["final"]["uplink_bits_per_round"] is not None
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    # a different experiment: refused
    with pytest.raises(UserError, match="fl.lr differ"):
        run_federation(make_cfg("fl.rounds=1", f"resume={run_dir}", "fl.lr=0.5"))
    # a second process holding the run: refused
    lock = RunLock(run_dir).acquire()
    try:
        with pytest.raises(UserError, match="in use by another ggl process"):
            run_federation(make_cfg("fl.rounds=2", f"resume={run_dir}"))
    finally:
        lock.release()
    # a checkpoint outside a ggl run folder: refused, the user's folder untouched
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", user / "sub" / "x.ckpt")
    (user / "results.json").write_text("my own results\n")
    with pytest.raises(UserError, match="not in the checkpoints/ folder of a ggl run folder"):
        run_federation(make_cfg("fl.rounds=2", f"resume={user / 'sub' / 'x.ckpt'}"))
    assert sorted(p.name for p in user.iterdir()) == ["results.json", "sub"]
    assert (user / "results.json").read_text() == "my own results\n"
    # a truncated checkpoint: one-line error before anything is written
    cut = run_dir / "checkpoints" / "cut.ckpt"
    data = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="not a torch file"):
        run_federation(make_cfg("fl.rounds=2", f"resume={cut}"))
    # a crafted checkpoint in a real run folder, with the unsafe environment variable set
    marker = tmp_path / "pwned"
    evil = _crafted(run_dir / "checkpoints" / "evil.ckpt", marker)
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with pytest.raises(UserError, match="refused"):
            run_federation(make_cfg("fl.rounds=2", f"resume={evil}"))
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    assert not marker.exists()
    # and finally the interrupted run resumes to its end
    done = run_federation(make_cfg("fl.rounds=2", f"resume={run_dir}"))
    assert done["final"]["rounds"] == 2 and _strict(run_dir / "results.json")["config"]["fl"]["rounds"] == 2


def test_fewer_rounds_than_done_is_refused(make_cfg):
    from ggl.jobs.federation import finished_results
    from ggl.runs.folder import RunFolder

    run = RunFolder(Path("/nonexistent"), ckpt=Path("x"), checkpoint={"epoch": 1, "ggl_rounds_completed": 2})
    with pytest.raises(UserError, match="already trained 2 rounds; resume with fl.rounds >= 2"):
        finished_results(run, 1)
    assert finished_results(run, 3) is None


def test_torchrun_two_processes_leave_one_run_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
            str(REPO / "train.py"), "--config", "fed_fp32.yaml", f"output_dir={tmp_path}", "logger.mode=disabled",
            "data.name=digits", "data.num_clients=4", "fl.rounds=1", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent = tmp_path / "fed_fp32"
    assert len(_folders(parent)) == 1
    assert _strict(parent / "latest" / "results.json")["final"]["rounds"] == 1


# ------------------------------------------------------------------------------ GAN export, report, sweep

def test_gan_export_refuses_existing_files_unless_asked(tmp_path):
    from ggl.jobs.gan import check_export

    target = tmp_path / "prior.pt"
    check_export(target, overwrite=False)  # nothing there yet
    (tmp_path / "prior.json").write_text("{}")
    with pytest.raises(ConfigError, match="gan.export_overwrite=true"):
        check_export(target, overwrite=False)
    check_export(target, overwrite=True)


def test_gan_run_with_an_existing_export_stops_before_training(tmp_path):
    from ggl.config import load_config
    from ggl.jobs.gan import run_gan

    target = tmp_path / "shipped.pt"
    target.write_bytes(b"the shipped prior")
    cfg = load_config("gan_mnist.yaml", [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled",
                                         "data.name=digits", f"gan.export={target}"])
    with pytest.raises(ConfigError, match="gan.export"):
        run_gan(cfg)
    assert target.read_bytes() == b"the shipped prior" and not (tmp_path / "runs").exists()


def _report_input(root: Path) -> Path:
    from test_report import Q4, _attack, _fed

    fed = _fed(root, "fed_q4", "20240101-000000", [Q4], 0.9, 1e6, 8.0)
    _attack(root, "attack_q4", "20240101-000100", fed, "q4", False, [12.0, 14.0], [0.4, 0.5])
    return root


def test_report_never_replaces_a_report_without_overwrite(tmp_path, capsys):
    from ggl.report.build import main

    runs = _report_input(tmp_path / "runs")
    assert main([str(runs)]) == 0  # default: beside the runs
    assert (runs / "report" / "privacy_utility.md").is_file()
    shipped = tmp_path / "reports"
    shipped.mkdir()
    (shipped / "privacy_utility.md").write_text("headline")
    (shipped / "reconstructions.png").write_bytes(b"png")
    assert main([str(runs), "--out", str(shipped)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (shipped / "privacy_utility.md").read_text() == "headline" and (shipped / "reconstructions.png").exists()
    assert main([str(runs), "--out", str(shipped), "--overwrite"]) == 0
    assert (shipped / "privacy_utility.md").read_text() != "headline"


def test_report_empty_input_and_file_out_are_one_line_errors(tmp_path, capsys):
    from ggl.report.build import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert not (tmp_path / "empty" / "report").exists()
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "results.json").write_text("{not json")
    assert main([str(tmp_path / "junk")]) == 2
    runs = _report_input(tmp_path / "runs")
    (tmp_path / "afile").write_text("x")
    assert main([str(runs), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "is a file" in err[2] and (tmp_path / "afile").read_text() == "x"


def test_done_check_ignores_keys_outside_the_experiment():
    from ggl.config import load_config, to_container
    from ggl.sweep.plan import comparable

    base = to_container(load_config("fed_q4.yaml", []))
    more = to_container(load_config("fed_q4.yaml", ["gan.epochs=7", "attack.generations=3"]))
    other = to_container(load_config("fed_q4.yaml", ["fl.lr=0.5"]))
    assert comparable(base) == comparable(more)
    assert comparable(base) != comparable(other)


def test_a_config_saved_before_a_key_existed_is_the_same_experiment():
    """Runs made before `quantize.grid` / `audit.probe` existed stay resumable and "done" for the sweep."""
    from ggl.config import experiment

    old = {"task": "fedavg", "seed": 0, "data": {}, "model": {}, "fl": {"rounds": 3}, "audit": {"rounds": []},
           "defenses": [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]}
    new = {**old, "audit": {"rounds": [], "probe": None, "local_steps": None},
           "defenses": [{**old["defenses"][0], "grid": "project"}]}
    assert experiment(old) == experiment(new)
    changed = {**new, "defenses": [{**new["defenses"][0], "grid": "seed"}]}
    assert experiment(old) != experiment(changed)  # a real change still counts


def test_every_load_goes_through_the_safe_loader():
    """A new torch.load elsewhere would skip the forced weights_only (and the env-var override guard)."""
    root = Path(__file__).resolve().parents[1] / "ggl"
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if p.name != "safe_load.py" and re.search(r"torch\.load\(", p.read_text().split('"""', 2)[-1])]
    assert direct == []
