"""ggl.sweep: the sweep file is W&B grid syntax the agent can drive, a tiny two-setting sweep on
`digits` runs, and rerunning it skips everything (nothing recomputed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.config import CONFIG_DIR
from ggl.sweep import ATTACKERS, W_AND_B_TOP_KEYS, Job, Progress, expand, load_sweep, main, plan

DEFAULT = CONFIG_DIR / "sweep_defenses.yaml"
TINY = CONFIG_DIR / "sweep_tiny.yaml"


def _run_dirs(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.is_dir() and not p.is_symlink())


def test_default_sweep_is_a_wandb_grid_of_every_defence():
    doc, grid = load_sweep(DEFAULT)
    assert set(doc) <= W_AND_B_TOP_KEYS and doc["method"] == "grid"
    assert "${args_no_hyphens}" in doc["command"] and "--one" in doc["command"]
    points = plan(grid)
    assert [p.setting for p in points] == [
        "fp32", "q8", "q4", "q2", "q1", "q8-stochastic-global", "q4-stochastic-global", "q2-stochastic-global",
        "q1-stochastic-global", "sign", "clip0.25", "clip0.25+nm0.1", "top0.01-ef"]
    attackers = {p.setting: [a.attacker for a in p.attacks] for p in points}
    # the adaptive attacker is run only where it models something of the defence
    assert attackers["fp32"] == attackers["q4-stochastic-global"] == ["non-adaptive"]
    assert attackers["q4"] == attackers["top0.01-ef"] == attackers["clip0.25+nm0.1"] == list(ATTACKERS)
    fed = {p.setting: p.fed for p in points}["q1"]
    assert fed.name == "fed-q1" and "audit.num_images=8" in fed.overrides
    assert 'defenses=[{"name": "quantize", "bits": 1, "rounding": "nearest", "range": "global"}]' in fed.overrides


def test_agent_arguments_run_exactly_one_point(tmp_path, capsys):
    """`wandb agent` formats each point's parameters with ${args_no_hyphens} (Python reprs)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    _, grid = load_sweep(DEFAULT)
    point = expand(grid)[11]  # clip + noise
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args_no_hyphens"]
    assert any(a.startswith("defenses=[{'name': 'clip'") for a in args)
    assert main([str(DEFAULT), "--one", "--list"] + args + [f"output_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "clip0.25+nm0.1: fed-clip0.25+nm0.1: to run, attack-clip0.25+nm0.1: to run, "
        "attack-clip0.25+nm0.1-adaptive: to run"]
    # --one without choosing a point is an error, not the whole grid
    assert main([str(DEFAULT), "--one", "--list"]) == 2
    assert "give one value for defenses" in capsys.readouterr().err


def test_time_left_is_work_left_times_the_measured_rate_of_each_kind():
    jobs = [Job("fed", "a", "fed-a", "", [], cost=10), Job("attack", "a", "attack-a", "", [], "non-adaptive", cost=100),
            Job("fed", "b", "fed-b", "", [], cost=10), Job("attack", "b", "attack-b", "", [], "non-adaptive", cost=100),
            Job("attack", "b", "attack-b-adaptive", "", [], "adaptive", cost=100),
            Job("fed", "c", "fed-c", "", [], cost=10, done_dir=Path("x"))]  # done before: no work left
    bar = Progress(jobs, enabled=False)
    assert bar.eta() is None  # no rate measured yet
    bar.finish(jobs[0], 30.0)   # 3 s per round
    bar.finish(jobs[1], 50.0)   # 0.5 s per search unit
    assert bar.eta() is None    # the adaptive attacker's rate is still unknown
    bar.finish(jobs[4], 200.0)  # 2 s per adaptive unit
    assert bar.eta() == pytest.approx(10 * 3.0 + 100 * 0.5)
    bar.close()


@pytest.mark.parametrize("extra, message", [
    (["fed.fl.rouns=2"], "unknown config key 'fl.rouns'"),
    (["atack.generations=2"], "unknown sweep parameter 'atack.generations'"),
    (["attackers=[sneaky]"], "'sneaky' is not one of"),
])
def test_bad_parameters_are_one_line_exit_2(tmp_path, capsys, extra, message):
    assert main([str(TINY), f"output_dir={tmp_path}", "--list"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_sweep_file_must_stay_wandb_syntax(tmp_path):
    from ggl.errors import ConfigError

    bad = tmp_path / "s.yaml"
    bad.write_text(TINY.read_text() + "settings: {}\n")
    with pytest.raises(ConfigError, match="top-level key 'settings' is not W&B sweep syntax"):
        load_sweep(bad)


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_sweep_runs_then_skips_everything_on_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ggl.audit.run.load_attack_prior", lambda path, *_: TinyPrior())
    out = tmp_path / "runs"
    args = [str(TINY), f"output_dir={out}", "--no-progress"]
    assert main(args) == 0
    assert "5 jobs run, 0 skipped" in capsys.readouterr().out
    dirs = _run_dirs(out)
    assert sorted(d.split("/")[0] for d in dirs) == ["attack-fp32", "attack-q4", "attack-q4-adaptive", "fed-fp32",
                                                     "fed-q4"]
    q4 = json.loads((out / "attack-q4-adaptive" / "latest" / "results.json").read_text())
    fed_q4 = (out / "fed-q4" / "latest").resolve()
    assert Path(q4["config"]["attack"]["source"]).resolve() == fed_q4 and q4["config"]["attack"]["adaptive"]
    assert q4["settings"] == ["q4-adaptive"] and q4["summary"]["q4-adaptive"]["n_images"] == 2

    assert main(args) == 0  # a rerun: everything is there already
    assert "0 jobs run, 5 skipped" in capsys.readouterr().out
    assert _run_dirs(out) == dirs

    # a federation stopped part-way (results of round 0 of 1 written, checkpoint there) is resumed,
    # and its attacks count as not done until it has finished
    res_file = fed_q4 / "results.json"
    res = json.loads(res_file.read_text())
    res["final"]["rounds"] = 0
    res_file.write_text(json.dumps(res))
    assert main(args[:2] + ["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "fp32: fed-fp32: done, attack-fp32: done",
        "q4: fed-q4: resume, attack-q4: to run, attack-q4-adaptive: to run"]
    assert main(args) == 0  # continues the federation in its own folder; its attacks are then found done
    assert "1 jobs run, 4 skipped" in capsys.readouterr().out
    assert _run_dirs(out) == dirs and json.loads(res_file.read_text())["final"]["rounds"] == 1

    # the report pairs the sweep's runs
    from ggl.report import collect

    rows = collect([out])["rows"]
    assert sorted((r["setting"], r["attacker"]) for r in rows) == [
        ("fp32", "non-adaptive"), ("q4", "adaptive"), ("q4", "non-adaptive")]
    assert all(r["test_acc"] is not None and r["n_images"] == 2 for r in rows)
