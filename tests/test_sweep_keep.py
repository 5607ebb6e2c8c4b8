"""``ggl sweep --keep DIR``: a sweep stopped on one machine goes on on another from a light copy of its
finished grid points (what a clone of the repository carries), without running them again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from _attack_fixtures import TinyPrior
from ggl.config import CONFIG_DIR
from ggl.report.collect import collect
from ggl.report.points import build_points
from ggl.sweep.keep import keep_points, light_files
from ggl.sweep.main import main
from ggl.sweep.plan import GridPoint, Job

TINY = CONFIG_DIR / "sweep_tiny.yaml"


def _psnr_by_victim(root: Path) -> dict:
    out = {}
    for p in build_points(collect([root]).pairs):
        for rec, _ in p.pairs:
            out[(p.key.defense, p.key.attacker, rec.capture_id, rec.image)] = rec.metrics["psnr"]
    return out


def test_a_sweep_goes_on_on_a_fresh_machine_from_the_kept_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    args = [str(TINY), "output_dir=runs", "--no-progress", "--keep", "kept"]

    monkeypatch.chdir(first)
    assert main(args) == 0
    assert "5 jobs run, 0 skipped" in capsys.readouterr().out
    kept = sorted(str(p.parent.relative_to("kept")) for p in Path("kept").glob("*/*/results.json"))
    assert sorted(k.split("/")[0] for k in kept) == ["attack-fp32", "attack-q4", "attack-q4-adaptive", "fed-fp32", "fed-q4"]
    # light: no captures, checkpoints or W&B files; the captures are on the first machine only
    assert not [p for p in Path("kept").rglob("*") if p.name in ("audit", "checkpoints", "wandb")]
    assert list(Path("runs").glob("fed-q4/*/checkpoints"))
    assert list(Path("runs").glob("fed-q4/*/audit"))

    # the second machine has the repository (the kept copy) and nothing else
    shutil.copytree(first / "kept", second / "kept")
    monkeypatch.chdir(second)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "5 finished runs put back from kept" in captured.err
    assert "0 jobs run, 5 skipped" in captured.out
    # the report reads the same per-image numbers on both machines
    assert _psnr_by_victim(second / "runs") == _psnr_by_victim(first / "runs") != {}

    # attack jobs added later need the captures, which the kept federation lacks: one clear line, no traceback
    assert main(args + ["attackers=[ggl-l2, ggl-cosine]"]) == 1
    captured = capsys.readouterr()
    assert "attack-fp32-ggl-cosine failed: its federation" in captured.err
    assert "put back from a kept copy (--keep) without the captures" in captured.err
    assert "Traceback" not in captured.err


def test_only_points_whose_jobs_are_all_done_are_kept(tmp_path):
    run = tmp_path / "runs" / "fed-a" / "20260101-000000"
    (run / "audit" / "observations").mkdir(parents=True)
    (run / "audit" / "observations" / "x.pt").write_bytes(b"0" * 100)
    (run / "wandb").mkdir()
    (run / "results.json").write_text("{}")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "wandb_id.txt").write_text("abc")
    (run / ".lock").write_text("")
    attack = tmp_path / "runs" / "attack-a" / "20260101-000001"
    (attack / "a@ggl-l2").mkdir(parents=True)
    (attack / "a@ggl-l2" / "images.pt").write_bytes(b"1")
    (attack / "a@ggl-l2" / "grid.png").write_bytes(b"2")
    (attack / "results.json").write_text("{}")
    # results.json comes last: a copy stopped part-way is never a finished run
    assert list(light_files(run)) == [Path("config.yaml"), Path("wandb_id.txt"), Path("results.json")]
    assert list(light_files(attack)) == [Path("a@ggl-l2/images.pt"), Path("results.json")]

    fed = Job("fed", "a", "fed-a", "", [], done_dir=run)
    pending = Job("attack", "a", "attack-a", "", [], "ggl-l2")
    point = GridPoint(params={}, setting="a", fed=fed, attacks=[pending])
    assert keep_points([point], tmp_path / "kept") == 0 and not (tmp_path / "kept").exists()
    pending.done_dir = attack
    assert keep_points([point], tmp_path / "kept") == 2
    assert json.loads((tmp_path / "kept" / "attack-a" / attack.name / "results.json").read_text()) == {}
    assert not (tmp_path / "kept" / "fed-a" / run.name / "audit").exists()
    assert keep_points([point], tmp_path / "kept") == 0  # kept already: nothing copied twice


def test_a_keep_folder_that_cannot_be_written_is_one_line_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    monkeypatch.chdir(tmp_path)
    Path("blocked").write_text("a file where the keep folder's subfolders would go")
    assert main([str(TINY), "output_dir=runs", "--no-progress", "--keep", "blocked"]) == 2
    err = capsys.readouterr().err
    assert "--keep blocked: not a folder" in err and "Traceback" not in err
    Path("kept").mkdir()
    Path("kept/fed-fp32").write_text("a file in the way of the federation's kept folder")
    assert main([str(TINY), "output_dir=runs", "--no-progress", "--keep", "kept"]) == 0
    captured = capsys.readouterr()
    assert "5 jobs run, 0 skipped" in captured.out
    assert "could not keep finished points in kept" in captured.err and "Traceback" not in captured.err
    assert sorted(p.parent.parent.name for p in Path("kept").glob("*/*/results.json")) == [
        "attack-q4", "attack-q4-adaptive", "fed-q4"]  # the other point is kept whole
