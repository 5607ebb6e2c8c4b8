"""Hostile run folders (issue 23, round two): a moved or copied run resumes from its newest round and never
forks its history; symlinked subfolders and a ``latest`` pointing elsewhere are refused in one line; a run
that fails before it has anything to resume or read never becomes ``latest``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.cli import attack_main
from ggl.core.errors import UserError
from ggl.jobs.federation import run_federation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _StartedAt(Callback):
    """The round (epoch) a fit starts from."""

    def __init__(self):
        self.epoch = None

    def on_train_start(self, trainer, module):
        self.epoch = trainer.current_epoch


class _FailIn(Callback):
    def __init__(self, epoch: int):
        self.at = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.at:
            raise RuntimeError("boom")


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _rounds(res: dict) -> list:
    return [h["round"] for h in res["history"]]


def test_a_copied_run_folder_resumes_from_its_newest_round(make_cfg, tmp_path, capsys):
    first = run_federation(make_cfg("fl.rounds=1", "name=f", f"output_dir={tmp_path / 'a'}"))
    original = Path(first["run_dir"])
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    before = _files(original)
    copy = tmp_path / "b" / "f" / original.name
    for rounds in (2, 3):
        start = _StartedAt()
        res = run_federation(make_cfg(f"fl.rounds={rounds}", "name=f", f"output_dir={tmp_path / 'b'}",
                                      f"resume={copy}"), extra_callbacks=[start])
        assert start.epoch == rounds - 1  # continues from the newest round, not from a stale last.ckpt
        assert _rounds(res) == list(range(1, rounds + 1))
        names = sorted(p.name for p in (copy / "checkpoints").iterdir())
        assert not [n for n in names if "-v" in n], names  # no last-v1.ckpt beside a stale last.ckpt
    err = capsys.readouterr().err
    assert f"resume: the run folder moved (written in '{original}', now '{copy.resolve()}')" in err
    assert _files(original) == before  # the original it was copied from is untouched


def test_resume_takes_the_newest_checkpoint_whatever_its_name(make_cfg, tmp_path, capsys):
    """A folder moved by an older ggl: last.ckpt is stale, last-v1.ckpt holds the newest round."""
    res = run_federation(make_cfg("fl.rounds=1", "checkpoint_every=1"))
    run_dir = Path(res["run_dir"])
    ckpts = run_dir / "checkpoints"
    stale = (ckpts / "last.ckpt").read_bytes()
    run_federation(make_cfg("fl.rounds=2", f"resume={run_dir}"))
    os.replace(ckpts / "last.ckpt", ckpts / "last-v1.ckpt")
    (ckpts / "last.ckpt").write_bytes(stale)
    for p in ckpts.glob("round*.ckpt"):
        p.unlink()
    start = _StartedAt()
    res = run_federation(make_cfg("fl.rounds=3", f"resume={ckpts / 'last.ckpt'}"), extra_callbacks=[start])
    assert start.epoch == 2 and _rounds(res) == [1, 2, 3]
    assert "'last-v1.ckpt' got further than 'last.ckpt'; continuing from it" in capsys.readouterr().err


def test_a_symlinked_checkpoints_folder_is_refused(make_cfg, tmp_path):
    res = run_federation(make_cfg("fl.rounds=1"))
    run_dir = Path(res["run_dir"])
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(run_dir / "checkpoints"), elsewhere)
    (run_dir / "checkpoints").symlink_to(elsewhere)
    before = _files(elsewhere)
    with pytest.raises(UserError, match=r"'checkpoints/' is a symbolic link .*replace the link with a real copy"):
        run_federation(make_cfg("fl.rounds=2", f"resume={run_dir}"))
    assert _files(elsewhere) == before


def test_a_latest_link_to_another_folder_is_refused(make_cfg, tmp_path):
    res = run_federation(make_cfg("fl.rounds=1", "audit.rounds=[0]", "audit.num_images=1"))
    theirs = tmp_path / "theirs" / "run"
    shutil.copytree(res["run_dir"], theirs)
    link = tmp_path / "runs" / "mine" / "latest"
    link.parent.mkdir(parents=True)
    link.symlink_to(theirs)
    with pytest.raises(UserError, match=r"latest' points outside its folder"):
        run_federation(make_cfg("fl.rounds=2", f"resume={link}"))
    with pytest.raises(UserError, match=r"latest' points outside its folder"):
        run_federation(make_cfg("fl.rounds=2", f"resume={link / 'checkpoints' / 'last.ckpt'}"))
    from ggl.jobs.attack import source_captures
    with pytest.raises(UserError, match=r"latest' points outside its folder"):
        source_captures(str(link))


def test_a_federation_that_fails_before_its_first_checkpoint_never_becomes_latest(make_cfg, tmp_path):
    latest = tmp_path / "runs" / "f" / "latest"
    with pytest.raises(RuntimeError, match="boom"):
        run_federation(make_cfg("fl.rounds=1", "name=f"), extra_callbacks=[_FailIn(0)])
    assert not latest.is_symlink()
    good = run_federation(make_cfg("fl.rounds=1", "name=f"))
    assert latest.resolve() == Path(good["run_dir"]).resolve()
    with pytest.raises(RuntimeError, match="boom"):
        run_federation(make_cfg("fl.rounds=1", "name=f"), extra_callbacks=[_FailIn(0)])
    assert latest.resolve() == Path(good["run_dir"]).resolve()
    # a run that fails after its first checkpoint is resumable: it is latest
    with pytest.raises(RuntimeError, match="boom"):
        run_federation(make_cfg("fl.rounds=2", "name=f"), extra_callbacks=[_FailIn(1)])
    assert latest.resolve() != Path(good["run_dir"]).resolve()
    assert (latest / "checkpoints" / "last.ckpt").is_file()


def test_an_attack_that_fails_before_its_results_never_becomes_latest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    args = [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits", "audit.num_images=1",
            "attack.optimizer=cmaes", "attack.generations=2", "attack.population=4", "attack.progress=false",
            "defenses=[]", "name=a"]
    latest = tmp_path / "runs" / "a" / "latest"

    def boom(*a, **k):
        raise RuntimeError("search crashed")
    with monkeypatch.context() as m:
        m.setattr("ggl.jobs.attack.attack_setting", boom)
        with pytest.raises(RuntimeError, match="search crashed"):
            attack_main(args)
    assert not latest.is_symlink()
    assert attack_main(args) == 0
    assert (latest / "results.json").is_file()
    capsys.readouterr()
