"""ggl.sweep: the sweep file is W&B grid syntax the agent can drive, a tiny two-setting sweep on
`digits` runs, and rerunning it skips everything (nothing recomputed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.config import CONFIG_DIR
from ggl.sweep.grid import W_AND_B_TOP_KEYS, expand, load_sweep
from ggl.sweep.main import main
from ggl.sweep.plan import Job, plan
from ggl.sweep.runner import Progress

DEFAULT = CONFIG_DIR / "sweep_defenses.yaml"
TINY = CONFIG_DIR / "sweep_tiny.yaml"


def _run_dirs(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*") if p.is_dir() and not p.is_symlink())


PORTFOLIO = ["ggl-l2", "ggl-l2-adaptive", "ggl-cosine", "ggl-cosine-adaptive", "ggl-eot", "inverting-gradients"]


def _attackers_of(job) -> list:
    over = next(o for o in job.overrides if o.startswith("attack.attackers="))
    return json.loads(over.split("=", 1)[1])


def test_default_sweep_is_a_wandb_grid_of_defences_rounds_and_the_portfolio():
    doc, grid = load_sweep(DEFAULT)
    assert set(doc) <= W_AND_B_TOP_KEYS and doc["method"] == "grid"
    assert "${args_no_hyphens}" in doc["command"] and "--one" in doc["command"]
    points = plan(grid)
    settings = ["q4", "q8-seedgrid", "q2", "sign", "clip0.25", "q4-stochastic-global", "q2-stochastic-global", "fp32"]
    # seed is the outer axis: every setting of federation seed 0 before seed 1's
    assert [p.setting for p in points] == [f"{s}-s{seed}" for seed in (0, 1, 2) for s in settings]
    # one attack job per (setting, attacker)
    by = {p.setting: p for p in points}
    assert all(len(_attackers_of(j)) == 1 for p in points for j in p.attacks)
    names = {s: [_attackers_of(j)[0] for j in by[f"{s}-s0"].attacks] for s in settings}
    grid_attackers = ["ggl-l2-observed-grid", "ggl-cell", "ggl-l2-decoded", "ggl-cosine-decoded",
                      "inverting-gradients-decoded"]
    assert names["fp32"] == ["ggl-l2", "inverting-gradients", "ggl-eot", *grid_attackers]
    # the adaptive twin runs where it models something (clipping, sign; refusing the min/max grids), not on fp32
    assert names["q4"] == names["clip0.25"] == names["fp32"] + ["ggl-l2-adaptive"]
    adaptive = next(j for j in by["clip0.25-s0"].attacks if _attackers_of(j) == ["ggl-l2-adaptive"])
    opts = [o for o in adaptive.overrides if o.startswith("attack.attacker_options=")][-1]
    assert json.loads(opts.split("=", 1)[1]) == {"ggl-l2-adaptive": {"minmax_grids": False}}
    assert [j.name for j in by["q4-s1"].attacks][0] == "attack-q4-s1-ggl-l2"
    # every attacker runs attack.search_seeds = 2 searches per victim, with the search the round-9 budget chose
    for j in by["q4-s0"].attacks:
        assert "attack.search_seeds=2" in j.overrides and "attack.adam_steps=300" in j.overrides
        assert "attack.adam_restarts=4" in j.overrides
    # each job carries only its own attacker's options (the others' would warn "does nothing")
    ig = next(j for j in by["q4-s0"].attacks if _attackers_of(j) == ["inverting-gradients-decoded"])
    opts = [o for o in ig.overrides if o.startswith("attack.attacker_options=")][-1]
    assert json.loads(opts.split("=", 1)[1]) == {"inverting-gradients-decoded": {"steps": 400, "restarts": 1}}
    fed = by["q4-s2"].fed
    # the evidence the issue asks for: 3 federation seeds x 16 victims = 48 per point, rounds 0, 3, 9
    assert "audit.num_images=16" in fed.overrides and "audit.rounds=[0, 3, 9]" in fed.overrides
    assert "seed=2" in fed.overrides
    assert 'defenses=[{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global"}]' in fed.overrides


def test_search_seeds_by_attacker_names_listed_attackers_and_whole_numbers(tmp_path, capsys):
    assert main([str(TINY), f"output_dir={tmp_path}", "--list", "attackers=[ggl-l2, ggl-cosine]",
                 "search_seeds_by_attacker={'ggl-cell': 3}"]) == 2
    assert "'ggl-cell' is not in 'attackers'" in capsys.readouterr().err
    assert main([str(TINY), f"output_dir={tmp_path}", "--list", "attackers=[ggl-l2, ggl-cosine]",
                 "search_seeds_by_attacker={'ggl-l2': 0}"]) == 2
    assert "must be a whole number >= 1" in capsys.readouterr().err
    _, grid = load_sweep(DEFAULT)
    grid = {**grid, "seed": [0], "search_seeds_by_attacker": [{"ggl-l2": 3}]}
    jobs = {_attackers_of(j)[0]: j for j in plan(grid)[0].attacks}
    assert "attack.search_seeds=3" in jobs["ggl-l2"].overrides  # the control's k runs, this attacker only
    assert "attack.search_seeds=3" not in jobs["ggl-cell"].overrides
    assert jobs["ggl-l2"].cost == 1.5 * jobs["ggl-l2-decoded"].cost  # its work counts in the sweep's time left


def test_portfolio_and_the_single_attacker_names_do_not_mix(tmp_path, capsys):
    assert main([str(TINY), f"output_dir={tmp_path}", "--list", "attackers=[ggl-l2, adaptive]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not both" in err[0]


def test_agent_arguments_run_exactly_one_point(tmp_path, capsys):
    """`wandb agent` formats each point's parameters with ${args_no_hyphens} (Python reprs)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    _, grid = load_sweep(DEFAULT)
    point = expand(grid)[4]  # clip, federation seed 0
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args_no_hyphens"]
    assert any(a.startswith("defenses=[{'name': 'clip'") for a in args)
    assert main([str(DEFAULT), "--one", "--list"] + args + [f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("clip0.25-s0: fed-clip0.25-s0: to run, attack-clip0.25-s0-ggl-l2: to run")
    # --one without choosing a point is an error, not the whole grid
    assert main([str(DEFAULT), "--one", "--list"]) == 2
    assert "give one value for seed, defenses" in capsys.readouterr().err


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
    bar.workers = 2  # two worker processes each measure their own job's seconds: the work left is shared
    assert bar.eta() == pytest.approx((10 * 3.0 + 100 * 0.5) / 2)
    bar.close()


@pytest.mark.parametrize("extra, message", [
    (["fed.fl.rouns=2"], "unknown config key 'fl.rouns'"),
    (["atack.generations=2"], "unknown sweep parameter 'atack.generations'"),
    (["attackers=[sneaky]"], "'sneaky' is not a known attacker; known: ggl-cell, ggl-cosine"),
])
def test_bad_parameters_are_one_line_exit_2(tmp_path, capsys, extra, message):
    assert main([str(TINY), f"output_dir={tmp_path}", "--list"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_sweep_file_must_stay_wandb_syntax(tmp_path):
    from ggl.core.errors import ConfigError

    bad = tmp_path / "s.yaml"
    bad.write_text(TINY.read_text() + "settings: {}\n")
    with pytest.raises(ConfigError, match="top-level key 'settings' is not W&B sweep syntax"):
        load_sweep(bad)


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_sweep_runs_then_skips_everything_on_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
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
    from ggl.report.collect import collect
    from ggl.report.points import build_points

    points = build_points(collect([out]).pairs)
    assert sorted((p.key.defense, p.key.attacker) for p in points) == [
        ("fp32", "ggl-l2"), ("q4", "best per victim"), ("q4", "ggl-l2"), ("q4", "ggl-l2-adaptive")]
    assert all(p.fed.test_acc is not None and p.n_images == 2 for p in points)


@pytest.mark.usefixtures("one_torch_thread")
def test_portfolio_sweep_over_two_rounds_reports_the_worst_case_per_round(tmp_path, monkeypatch, capsys):
    """The headline's shape on a tiny case: captures at rounds 0 and 1, the portfolio per setting (ggl-eot
    refuses the deterministic q4 and says why), points per round, the worst case with who won, and the
    accuracy of the model each round's victims were attacked at."""
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    out = tmp_path / "runs"
    assert main([str(TINY), f"output_dir={out}", "--no-progress", "attackers=[ggl-l2, ggl-l2-adaptive, ggl-eot]",
                 "defenses=[{name: quantize, bits: 4, rounding: nearest, range: global}]", "fed.fl.rounds=2",
                 "fed.audit.rounds=[0, 1]", "fed.fl.eval_every=1"]) == 0
    assert "4 jobs run" in capsys.readouterr().out  # the federation, then one attack job per attacker
    res = {a: json.loads((out / f"attack-q4-{a}" / "latest" / "results.json").read_text())
           for a in ("ggl-l2", "ggl-l2-adaptive", "ggl-eot")}
    assert res["ggl-l2"]["settings"] == ["q4@ggl-l2"] and res["ggl-l2-adaptive"]["settings"] == ["q4@ggl-l2-adaptive"]
    assert "deterministic" in res["ggl-eot"]["refused"]["q4@ggl-eot"]
    records = res["ggl-l2"]["records"] + res["ggl-l2-adaptive"]["records"]
    assert {(r["defense"], r["adaptive"], r["attacker"], r["round"]) for r in records} == {
        ("q4", False, "ggl-l2", 0), ("q4", True, "ggl-l2-adaptive", 0),
        ("q4", False, "ggl-l2", 1), ("q4", True, "ggl-l2-adaptive", 1)}

    from ggl.report.collect import collect
    from ggl.report.points import build_points, worst_cases

    points = build_points(collect([out]).pairs)
    heads = worst_cases(points)
    assert [(p.key.defense, p.key.round, p.key.attacker, p.n_images) for p in heads] == [
        ("q4", 0, "best per victim", 2), ("q4", 1, "best per victim", 2)]
    history = json.loads((out / "fed-q4" / "latest" / "results.json").read_text())["history"]
    assert heads[1].fed.round_test_acc == next(h["test_acc"] for h in history if h["round"] == 1)
    assert heads[0].fed.round_test_acc is None  # the untrained model is not evaluated
    for head in heads:
        by_attacker = {p.key.attacker: p for p in points if p.key.round == head.key.round and not p.worst_case}
        for rec, _ in head.pairs:  # per victim: the better of the two attackers, and who it was
            scores = {name: next(x.metrics["psnr"] for x, _ in p.pairs if x.capture_id == rec.capture_id)
                      for name, p in by_attacker.items()}
            assert rec.metrics["psnr"] == max(scores.values())
        wins = head.worst_case.wins
        assert sum(wins.values()) == 2 and set(wins) <= {"ggl-l2", "ggl-l2-adaptive"}
    # the report's headline (accuracy at each round included) is rebuilt from its CSVs alone
    from ggl.report.build import main as report_main

    assert report_main([str(out), "--out", str(tmp_path / "rep")]) == 0
    assert report_main(["--from-csv", str(tmp_path / "rep" / "per_image.csv"), "--out", str(tmp_path / "again")]) == 0
    md, md2 = ((tmp_path / d / "privacy_utility.md").read_text() for d in ("rep", "again"))
    head = "| setting | round | probe | test acc |"
    assert md.split(head)[1].split("\n\n")[0] == md2.split(head)[1].split("\n\n")[0]
    assert f"| q4 | 1 | fedsgd | {history[-1]['test_acc']:.3f} | {heads[1].fed.round_test_acc:.3f} |" in md2
    assert (tmp_path / "again" / "leakage_vs_round.png").read_bytes()[:4] == b"\x89PNG"


def test_search_seeds_and_federation_seeds_reach_the_per_image_csv(tmp_path, monkeypatch, capsys):
    """A sweep over two federation seeds with two search seeds per victim: every (fed seed, victim) has one
    row per search seed in per_image.csv (fed_seed, search_seed), none dropped. (That the batched seed-0
    search is the one-search run is tested in float64: tests/test_attack_search.py.)"""
    import csv

    from ggl.report.build import main as report_main

    import yaml

    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    doc = yaml.safe_load(TINY.read_text())
    doc["parameters"]["seed"] = {"values": [0, 1]}  # federation seeds: a grid axis of the sweep file
    seeded = tmp_path / "sweep_seeds.yaml"
    seeded.write_text(yaml.safe_dump(doc))
    common = [str(seeded), "--no-progress", "attackers=[ggl-l2]", "defenses=[]"]
    out2, out1 = tmp_path / "two", tmp_path / "one"
    assert main(common + [f"output_dir={out2}", "attack.search_seeds=2"]) == 0
    assert main(common + [f"output_dir={out1}", "attack.search_seeds=1"]) == 0
    capsys.readouterr()
    rows = {}
    for name, out in (("two", out2), ("one", out1)):
        assert report_main([str(out), "--out", str(tmp_path / f"rep-{name}")]) == 0
        with (tmp_path / f"rep-{name}" / "per_image.csv").open() as fh:
            rows[name] = list(csv.DictReader(fh))
    two = {(r["fed_seed"], r["victim_id"], r["round"], r["search_seed"]): r["psnr"] for r in rows["two"]}
    one = {(r["fed_seed"], r["victim_id"], r["round"], r["search_seed"]): r["psnr"] for r in rows["one"]}
    assert {k[0] for k in two} == {"0", "1"} and {k[3] for k in two} == {"0", "1"}
    assert len(two) == len(rows["two"]) == 2 * len(one)  # every victim twice, no row lost or merged
    assert {k for k in two if k[3] == "0"} == set(one)  # the same victims, seeds and rounds
    assert any(two[(f, v, r, "1")] != two[(f, v, r, "0")] for f, v, r, _ in one)
    # the seeds-aware sections come back the same from the CSV alone
    assert report_main(["--from-csv", str(tmp_path / "rep-two" / "per_image.csv"), "--out", str(tmp_path / "csv")]) == 0
    md, again = ((tmp_path / d / "privacy_utility.md").read_text() for d in ("rep-two", "csv"))
    part = "## How much of the worst case is selection"
    assert part in md and md.split(part)[1].split("\n\n")[2] == again.split(part)[1].split("\n\n")[2]
